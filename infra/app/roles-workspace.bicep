// Role assignments on the Azure ML workspace and its landing data, in the workspace's resource group (which may
// be another one when an existing workspace is used). Every principal is the app's user-assigned identity.
@description('principalId of the app user-assigned identity (identity.bicep).')
param principalId string
param workspaceName string
param datastoreAccountName string
param landingContainer string

// AzureML Data Scientist: f6c7c914-8db3-469d-8ca1-694a8f32e121. Submit jobs, register models, manage online
// endpoints and deployments; cannot change the workspace, its computes' settings or its role assignments.
var azureMLDataScientist = 'f6c7c914-8db3-469d-8ca1-694a8f32e121'
// Monitoring Reader: 43d0d8ad-25c7-4714-9337-8ba259a9fe05. Online endpoint metrics (endpoints are workspace children).
var monitoringReader = '43d0d8ad-25c7-4714-9337-8ba259a9fe05'
// Storage Blob Data Reader: 2a2b9908-6ea1-4ae2-8e65-a410df84e7d1. Read landing blobs, scoped to that container only.
var storageBlobDataReader = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-10-01' existing = {
  name: workspaceName
}

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

resource dataScientist 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, principalId, azureMLDataScientist)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', azureMLDataScientist)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource metricsReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, principalId, monitoringReader)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringReader)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
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
