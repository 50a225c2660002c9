// One Event Grid subscription per entry of infra/subscriptions.json whose `source` matches this module's source
// (ml | storage: a system topic; custom: the app's custom topic). Deployed by postdeploy.bicep AFTER the code:
// an AzureFunction destination is validated against the deployed function, which must already exist.
@allowed([
  'ml'
  'storage'
  'custom'
])
param source string
@description('System topic name (source ml or storage) or custom topic name (source custom), in this resource group.')
param topicName string
param functionAppId string
param identityId string
param deadLetterStorageId string
@description('True when the topic carries the app identity (a topic system-topic.bicep created): dead-letter with it. False for a reused system topic, which may not carry it: Event Grid then dead-letters with its own access.')
param deadLetterWithIdentity bool = true

var config = loadJsonContent('../subscriptions.json')
var defaults = config.defaults
var subscriptions = config.subscriptions

// Properties of every subscription, index-aligned with `subscriptions`.
var properties = [for s in subscriptions: {
  destination: {
    // Event Grid calls the function through the Functions Event Grid extension; no key is stored here.
    endpointType: 'AzureFunction'
    properties: {
      resourceId: '${functionAppId}/functions/${s.function}'
      maxEventsPerBatch: 1
      preferredBatchSizeInKilobytes: 64
    }
  }
  eventDeliverySchema: 'EventGridSchema'
  filter: {
    includedEventTypes: s.includedEventTypes
    subjectBeginsWith: s.subjectBeginsWith
    subjectEndsWith: s.subjectEndsWith
    isSubjectCaseSensitive: false
    enableAdvancedFilteringOnArrays: true
    advancedFilters: s.advancedFilters
  }
  retryPolicy: contains(s, 'retryPolicy') ? s.retryPolicy : defaults.retryPolicy
  // Undeliverable events land in a blob container on the app storage, written with the topic's
  // user-assigned identity (the app identity, Storage Blob Data Owner there): no storage key involved.
  deadLetterWithResourceIdentity: deadLetterWithIdentity ? {
    identity: {
      type: 'UserAssigned'
      userAssignedIdentity: identityId
    }
    deadLetterDestination: {
      endpointType: 'StorageBlob'
      properties: {
        resourceId: deadLetterStorageId
        blobContainerName: contains(s, 'deadLetterContainer') ? s.deadLetterContainer : defaults.deadLetterContainer
      }
    }
  } : null
  deadLetterDestination: deadLetterWithIdentity ? null : {
    endpointType: 'StorageBlob'
    properties: {
      resourceId: deadLetterStorageId
      blobContainerName: contains(s, 'deadLetterContainer') ? s.deadLetterContainer : defaults.deadLetterContainer
    }
  }
}]

resource systemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' existing = {
  name: topicName
}

resource customTopic 'Microsoft.EventGrid/topics@2025-02-15' existing = {
  name: topicName
}

resource systemSubscriptions 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = [for (s, i) in subscriptions: if (source != 'custom' && s.source == source) {
  parent: systemTopic
  name: s.name
  properties: properties[i]
}]

resource customSubscriptions 'Microsoft.EventGrid/topics/eventSubscriptions@2025-02-15' = [for (s, i) in subscriptions: if (source == 'custom' && s.source == 'custom') {
  parent: customTopic
  name: s.name
  properties: properties[i]
}]
