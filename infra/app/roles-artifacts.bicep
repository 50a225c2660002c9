// Write access for the app identity to the new workspace's default blob datastore (workspaceblobstore) and to
// nothing else on its storage account. Shared keys are off there, so the app uploads each training job's code
// snapshot (shared/training/) with its Microsoft Entra identity when it submits the job (azure-ai-ml uploads with the
// caller's credential when the datastore stores no key or SAS). The same account holds the `landing` container, where
// a new blob starts training, so the app gets no write access on the account: the assignment is scoped to the
// default blob container alone. (The training cluster's identity holds Storage Blob Data Contributor on the account,
// as Azure ML documents: workspace.bicep.)
//
// A module because that container is named after the workspace's immutable id (azureml-blobstore-<workspaceId>),
// a value that exists only once the workspace does: a resource name must be known when the deployment starts, and
// a module parameter is, for the module (the caller passes workspace.properties.workspaceId).
@description('principalId of the app user-assigned identity (identity.bicep): uploads the job code snapshots.')
param principalId string
@description('The workspace\'s storage account (the datastore account).')
param datastoreAccountName string
@description('The workspace\'s default blob container, azureml-blobstore-<workspaceId> (the workspace creates it).')
param artifactContainerName string

// Storage Blob Data Contributor: ba92f5b4-2d11-453d-a403-e96b0029c9fe. Read, write and delete blobs (and the container
// itself); here only in the default blob container, never on the account.
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

resource datastoreAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: datastoreAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: datastoreAccount
  name: 'default'
}

resource artifacts 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: artifactContainerName
}

resource appArtifactWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(artifacts.id, principalId, storageBlobDataContributor)
  scope: artifacts
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
