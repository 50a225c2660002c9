// The endpoint traffic-log policy's identity (endpoint-logs.bicep) on the app's Log Analytics workspace: a diagnostic
// setting that sends logs to a workspace needs rights on that workspace too ("assignPermissions" in the policy).
@description('principalId of the policy assignment\'s system-assigned identity.')
param policyPrincipalId string
param logAnalyticsName string

// Log Analytics Contributor: 92aaf0da-9dab-42b6-94a3-d43ce8d16293. The role the policy's roleDefinitionIds name.
var logAnalyticsContributor = '92aaf0da-9dab-42b6-94a3-d43ce8d16293'

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: logAnalyticsName
}

resource policyOnLogs 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(logAnalytics.id, policyPrincipalId, logAnalyticsContributor)
  scope: logAnalytics
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', logAnalyticsContributor)
    principalId: policyPrincipalId
    principalType: 'ServicePrincipal'
  }
}
