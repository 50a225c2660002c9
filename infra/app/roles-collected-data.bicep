// Blob read of the workspace's default blob container, where model data collection writes what online deployments
// receive and answer (the drift monitor's input). Read only, and only that container: the narrowest built-in role at
// the narrowest scope Azure RBAC offers for blobs.
@description('principalId of the app user-assigned identity (identity.bicep).')
param principalId string
@description('The workspace\'s storage account.')
param storageAccountName string
@description('The workspace\'s default blob container, azureml-blobstore-<workspaceId>.')
param containerName string

// Storage Blob Data Reader: 2a2b9908-6ea1-4ae2-8e65-a410df84e7d1. Read and list blobs.
var storageBlobDataReader = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: account
  name: 'default'
}

resource collected 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: containerName
}

resource collectedDataReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(collected.id, principalId, storageBlobDataReader)
  scope: collected
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReader)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
