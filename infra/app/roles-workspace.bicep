// Role assignments on the Azure ML workspace, in its resource group (another one when an existing workspace is
// used). Every principal is the app's user-assigned identity.
@description('principalId of the app user-assigned identity (identity.bicep).')
param principalId string
param workspaceName string
@description('The app\'s Azure ML role: the custom role of main.bicep (infra/app-role.json), or AzureML Data Scientist.')
param mlRoleDefinitionId string

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-10-01' existing = {
  name: workspaceName
}

resource mlRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  // Named by the role's GUID, as before the custom role existed: redeploying with useCustomRole=false finds the same
  // assignment instead of colliding with it (RoleAssignmentExists).
  name: guid(workspace.id, principalId, last(split(mlRoleDefinitionId, '/')))
  scope: workspace
  properties: {
    roleDefinitionId: mlRoleDefinitionId
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// The data online deployments collect (model data collection) lands in the workspace's default blob datastore,
// workspaceblobstore = the container azureml-blobstore-<workspaceId> on the workspace's storage account; the drift
// monitor reads it. A module because the container's name exists only once the workspace does (roles-artifacts.bicep
// explains). The account is taken to be in the workspace's resource group, where Azure ML creates it.
module collectedData 'roles-collected-data.bicep' = {
  name: 'roles-collected-data'
  params: {
    principalId: principalId
    storageAccountName: last(split(workspace.properties.storageAccount, '/'))
    containerName: 'azureml-blobstore-${workspace.properties.workspaceId}'
  }
}

// Where the drift monitor reads collected data (MLOPS_DRIFT_CONTAINER_URL): the same container as above.
output collectedDataContainerUrl string = 'https://${last(split(workspace.properties.storageAccount, '/'))}.blob.${environment().suffixes.storage}/azureml-blobstore-${workspace.properties.workspaceId}'
