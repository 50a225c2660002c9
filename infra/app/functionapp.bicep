// The Function App on the Flex Consumption plan (Python 3.11), running as the user-assigned identity.
// App settings are the host's own identity-based settings plus the MLOPS_* settings passed in `settings`:
// no keys and no connection strings with secrets anywhere.
param planName string
param name string
param location string
param tags object
param identityId string
param identityClientId string
param storageAccountName string
param deploymentContainerName string
param appInsightsName string
param maximumInstanceCount int
@description('Subnet delegated to Microsoft.App/environments for outbound VNet integration; empty for none.')
param subnetId string = ''
@description('MLOPS_* settings read by shared/config.py (names checked by tests/infra).')
param settings object

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  #checkov:skip=CKV_AZURE_225: Flex Consumption zone redundancy is region-dependent; the app is event-driven and Event Grid retries for 24 h
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  #checkov:skip=CKV_AZURE_222: Event Grid and the Azure Monitor action group call the functions over the public endpoint (function keys / Event Grid handshake)
  #checkov:skip=CKV_AZURE_17: Event Grid and action group webhooks cannot present client certificates
  #checkov:skip=CKV_AZURE_212: Flex Consumption scales from zero by design; there is no instance minimum to fail over
  #checkov:skip=CKV_AZURE_213: Flex Consumption does not support App Service health check; the platform manages instance health
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    // Key Vault references (MLOPS_TEAMS_WEBHOOK_URL, MLOPS_TEAMS_ROUTES) resolve with the user-assigned identity.
    keyVaultReferenceIdentity: identityId
    virtualNetworkSubnetId: empty(subnetId) ? null : subnetId
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      remoteDebuggingEnabled: false
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: 2048
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// The host's own settings. Flex Consumption rejects FUNCTIONS_WORKER_RUNTIME / FUNCTIONS_EXTENSION_VERSION /
// WEBSITE_RUN_FROM_PACKAGE: the runtime and the package location live in functionAppConfig above.
var hostSettings = {
  AzureWebJobsStorage__accountName: storage.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // DefaultAzureCredential in the app picks the user-assigned identity with this.
  AZURE_CLIENT_ID: identityClientId
}

resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  #checkov:skip=CKV_AZURE_13: false positive: an appsettings child resource, not a site; HTTP functions use function keys
  #checkov:skip=CKV_AZURE_63: false positive: appsettings child; logs go to Application Insights
  #checkov:skip=CKV_AZURE_65: false positive: appsettings child; logs go to Application Insights
  #checkov:skip=CKV_AZURE_66: false positive: appsettings child; logs go to Application Insights
  #checkov:skip=CKV_AZURE_80: false positive: appsettings child of a Python app; no .NET Framework
  #checkov:skip=CKV_AZURE_88: false positive: appsettings child; Flex Consumption has no Azure Files content share
  #checkov:skip=CKV_AZURE_222: false positive: appsettings child; see the site's skip
  parent: site
  name: 'appsettings'
  properties: union(hostSettings, settings, {
    MLOPS_STATUS_URL: 'https://${site.properties.defaultHostName}/api/status'
  })
}

// No publishing with basic credentials: azd deploys with Microsoft Entra ID.
resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = site.name
output id string = site.id
output defaultHostName string = site.properties.defaultHostName
