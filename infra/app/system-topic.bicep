// The Event Grid system topic of one source: the Azure ML workspace (source 'ml') or the datastore storage account
// (source 'storage'), deployed in the source's resource group. Event Grid allows one system topic per source, so an
// existing one (existingTopicName; the preprovision hook finds it) is reused, never duplicated. A topic created here
// carries the app's user-assigned identity, which its subscriptions use to dead-letter to the app storage account.
@allowed([
  'ml'
  'storage'
])
param source string
@description('Name of the workspace (ml) or of the storage account (storage).')
param sourceName string
@description('Name of the source\'s existing system topic; empty: create one.')
param existingTopicName string = ''
param tags object
param identityId string

var create = empty(existingTopicName)

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-10-01' existing = if (source == 'ml') {
  name: sourceName
}

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = if (source == 'storage') {
  name: sourceName
}

resource topic 'Microsoft.EventGrid/systemTopics@2025-02-15' = if (create) {
  name: 'evgst-${sourceName}'
  // A system topic lives in its source's region.
  location: (source == 'ml') ? workspace.location : account.location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    source: (source == 'ml') ? workspace.id : account.id
    topicType: (source == 'ml') ? 'Microsoft.MachineLearningServices.Workspaces' : 'Microsoft.Storage.StorageAccounts'
  }
}

output topicName string = create ? 'evgst-${sourceName}' : existingTopicName
@description('False when an existing topic is reused: it may not carry the app identity, so its subscriptions dead-letter without it.')
output created bool = create
@description('Region of the source (for the workspace: where its online endpoints, and so their metrics, are).')
output sourceLocation string = (source == 'ml') ? workspace.location : account.location
