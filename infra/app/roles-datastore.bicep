// Read access to the landing data, in the datastore storage account's resource group (which may differ from the
// workspace's when an existing account is used). The principal is the app's user-assigned identity.
@description('principalId of the app user-assigned identity (identity.bicep).')
param principalId string
param datastoreAccountName string
param landingContainer string

// Storage Blob Data Reader: 2a2b9908-6ea1-4ae2-8e65-a410df84e7d1. Read landing blobs, scoped to that container only.
var storageBlobDataReader = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'

resource datastoreAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: datastoreAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: datastoreAccount
  name: 'default'
}

resource landing 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: landingContainer
}

resource landingReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(landing.id, principalId, storageBlobDataReader)
  scope: landing
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReader)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
