// Assigns the endpoint traffic-log policy (main.bicep defines it from endpoint-logs-policy.json) to the workspace's
// resource group, with a system-assigned identity that deploys each endpoint's diagnostic setting. The policy acts on
// endpoints created or updated after the assignment, once each one has finished provisioning; an endpoint that
// already existed needs a remediation task (docs/azure.md).
param location string
param policyDefinitionId string
@description('Resource id of the app\'s Log Analytics workspace.')
param logAnalyticsId string

// Log Analytics Contributor: 92aaf0da-9dab-42b6-94a3-d43ce8d16293. The role the policy's roleDefinitionIds name (as
// Microsoft's built-in "Enable logging by category group ... to Log Analytics" policies do): write diagnostic
// settings and the deployment that carries them.
var logAnalyticsContributor = '92aaf0da-9dab-42b6-94a3-d43ce8d16293'

resource assignment 'Microsoft.Authorization/policyAssignments@2024-04-01' = {
  name: 'mlops-endpoint-traffic-logs'
  location: location
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    displayName: 'Online endpoint traffic logs to the MLOps automation app'
    policyDefinitionId: policyDefinitionId
    enforcementMode: 'Default'
    parameters: {
      logAnalytics: {
        value: logAnalyticsId
      }
    }
  }
}

// The remediation identity writes the endpoints' diagnostic settings in this resource group.
resource remediator 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, assignment.id, logAnalyticsContributor)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', logAnalyticsContributor)
    principalId: assignment.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

output principalId string = assignment.identity.principalId
