// The app's storage account: host storage (AzureWebJobsStorage), the Flex deployment package container, the
// ledger tables and the Event Grid dead-letter container. Microsoft Entra ID only: shared keys are disabled.
param name string
param location string
param tags object

// The dead-letter container named by subscriptions.json (the one list of Event Grid subscriptions).
var deadLetterContainerName = loadJsonContent('../subscriptions.json').defaults.deadLetterContainer
var deploymentContainerName = 'app-package'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  #checkov:skip=CKV_AZURE_206: LRS on purpose: the package is redeployable, the ledger only deduplicates, and ZRS is missing in some Flex regions
  #checkov:skip=CKV_AZURE_35: Flex Consumption without VNet integration reaches its host storage over the public endpoint; access is Entra ID only (shared keys off)
  #checkov:skip=CKV_AZURE_59: same reason as CKV_AZURE_35: public endpoint, Entra ID only, no shared keys, no anonymous blobs
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deadLetterContainerName
  properties: {
    publicAccess: 'None'
  }
}

// The ledger, audit trail and alert outbox (shared/adapters/tables.py DEFAULT_TABLES; a test keeps the names in
// step). Declared here so the app never needs to create them on a cold start.
var ledgerTableNames = ['mlopsledger', 'mlopsaudit', 'mlopsoutbox', 'mlopsstate']

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource ledgerTables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for tableName in ledgerTableNames: {
  parent: tableService
  name: tableName
}]

output name string = account.name
output id string = account.id
output blobEndpoint string = account.properties.primaryEndpoints.blob
output tableEndpoint string = account.properties.primaryEndpoints.table
output deploymentContainerName string = deploymentContainer.name
output deadLetterContainerName string = deadLetterContainer.name
