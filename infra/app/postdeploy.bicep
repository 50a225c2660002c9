// Deployed by infra/hooks/postdeploy.sh after `azd deploy` (az deployment group create into the app resource
// group): the Event Grid subscriptions, which need the deployed functions, and the alert action group, whose
// webhook URL carries the monitor_alert function key and so can only be built after deployment.
param functionAppName string
param identityName string
param storageAccountName string
param customTopicName string
param mlSystemTopicName string
param storageSystemTopicName string
@description('Resource group of the workspace and its system topic.')
param systemTopicsResourceGroup string
@description('Resource group of the datastore storage account and its system topic.')
param storageSystemTopicResourceGroup string = systemTopicsResourceGroup
@description('False when the workspace\'s system topic was reused rather than created (main.bicep output AZURE_ML_SYSTEM_TOPIC_CREATED).')
param mlSystemTopicCreated bool = true
@description('False when the storage account\'s system topic was reused rather than created.')
param storageSystemTopicCreated bool = true

@secure()
@description('https://<app>/api/alerts?code=<monitor_alert function key>, built by the hook when the secure webhook is not configured. Never an output.')
param alertWebhookUrl string = ''

@description('Object id of the alerts app registration (secure webhook). Empty: the keyed webhook above.')
param alertAppObjectId string = ''

@description('Its Application ID URI: the audience of the token the action group sends.')
param alertAppIdentifierUri string = ''

@description('https://<app>/api/alerts/secure: no key in it.')
param alertSecureWebhookUrl string = ''

var secureWebhook = !empty(alertAppObjectId) && !empty(alertAppIdentifierUri) && !empty(alertSecureWebhookUrl)

param actionGroupName string = 'ag-mlops-alerts'

resource site 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = {
  name: identityName
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

module mlSubscriptions 'eventgrid-subscriptions.bicep' = {
  name: 'eventgrid-subscriptions-ml'
  scope: resourceGroup(systemTopicsResourceGroup)
  params: {
    source: 'ml'
    topicName: mlSystemTopicName
    functionAppId: site.id
    identityId: identity.id
    deadLetterStorageId: storage.id
    deadLetterWithIdentity: mlSystemTopicCreated
  }
}

module storageSubscriptions 'eventgrid-subscriptions.bicep' = {
  name: 'eventgrid-subscriptions-storage'
  scope: resourceGroup(storageSystemTopicResourceGroup)
  params: {
    source: 'storage'
    topicName: storageSystemTopicName
    functionAppId: site.id
    identityId: identity.id
    deadLetterStorageId: storage.id
    deadLetterWithIdentity: storageSystemTopicCreated
  }
}

module customSubscriptions 'eventgrid-subscriptions.bicep' = {
  name: 'eventgrid-subscriptions-custom'
  params: {
    source: 'custom'
    topicName: customTopicName
    functionAppId: site.id
    identityId: identity.id
    deadLetterStorageId: storage.id
  }
}

// Azure Monitor alerts (e.g. on an online endpoint's latency or errors) notify this action group, which calls
// POST /api/alerts (monitor_alert) with the common alert schema.
resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: actionGroupName
  location: 'global'
  properties: {
    groupShortName: 'mlopsalerts'
    enabled: true
    // The secure webhook keeps the key out of the action group (readable by anyone with Reader): Azure Monitor gets
    // an Entra ID token for the alerts app registration instead, and the app checks it and its app role.
    webhookReceivers: [
      secureWebhook ? {
        name: 'monitor-alert-function'
        serviceUri: alertSecureWebhookUrl
        useCommonAlertSchema: true
        useAadAuth: true
        objectId: alertAppObjectId
        identifierUri: alertAppIdentifierUri
        tenantId: tenant().tenantId
      } : {
        name: 'monitor-alert-function'
        serviceUri: alertWebhookUrl
        useCommonAlertSchema: true
        useAadAuth: false
      }
    ]
  }
}

output actionGroupId string = actionGroup.id
