// Event Grid system topics on the Azure ML workspace and on its datastore storage account, deployed in the
// workspace's resource group. Their subscriptions come later (postdeploy.bicep), once the functions exist.
// Both topics carry the app's user-assigned identity, used to dead-letter to the app storage account.
param tags object
param workspaceName string
param datastoreAccountName string
param identityId string

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-10-01' existing = {
  name: workspaceName
}

resource datastoreAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: datastoreAccountName
}

resource mlTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' = {
  name: 'evgst-${workspaceName}'
  // A system topic lives in its source's region.
  location: workspace.location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    source: workspace.id
    topicType: 'Microsoft.MachineLearningServices.Workspaces'
  }
}

resource storageTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' = {
  name: 'evgst-${datastoreAccountName}'
  location: datastoreAccount.location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    source: datastoreAccount.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

output mlTopicName string = mlTopic.name
output storageTopicName string = storageTopic.name
