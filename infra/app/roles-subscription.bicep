// Subscription-scope roles of the app's user-assigned identity. Only one: the metrics batch API
// (MetricsClient.query_resources, POST /subscriptions/{id}/metrics:getBatch) authorizes the caller on the
// subscription, so Monitoring Reader on the workspace alone answers 401 ("migrate to the batch API", 401 errors).
targetScope = 'subscription'

@description('principalId of the app user-assigned identity (identity.bicep).')
param principalId string

// Monitoring Reader: 43d0d8ad-25c7-4714-9337-8ba259a9fe05. Read metrics (and other monitoring data); no writes.
var monitoringReader = '43d0d8ad-25c7-4714-9337-8ba259a9fe05'

resource metricsReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, principalId, monitoringReader)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringReader)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
