// Everything `azd provision` creates for the MLOps automation app.
//
// Subscription scope, because the deployment spans resource groups: it creates the app's resource group, and
// an existing Azure ML workspace may live in another one (its role assignments, Event Grid system topics and the
// policy assignment are deployed there through modules). Event Grid subscriptions and the alert action group are
// NOT deployed here: they need the function code deployed first (see infra/app/postdeploy.bicep and
// infra/hooks/postdeploy.sh, run by azd as the `postdeploy` hook).
targetScope = 'subscription'

@minLength(1)
@maxLength(40)
@description('azd environment name; names and tags every resource.')
param environmentName string

@minLength(1)
@description('Region of every resource (Flex Consumption must be available there).')
param location string

@secure()
@description('Teams Workflows webhook URL for alerts. Stored only in Key Vault; never in app settings or outputs.')
param teamsWebhookUrl string

@secure()
@description('MLOPS_TEAMS_ROUTES (the JSON routing table, whose URLs are webhooks) as base64: azd substitutes parameter values into main.parameters.json without escaping the quotes of JSON. Stored only in Key Vault. Empty: no routing table.')
param teamsRoutesBase64 string = ''

@description('Name of an existing Azure ML workspace to automate. Empty: create a new workspace.')
param existingWorkspaceName string = ''

@description('Resource group of the existing workspace (defaults to the app resource group).')
param existingWorkspaceResourceGroup string = ''

@description('Storage account holding the landing data of the existing workspace (its datastore account).')
param existingDatastoreAccountName string = ''

@description('Azure ML datastore the app registers landing data through. A new workspace gets one named "landing".')
param datastoreName string = 'landing'

@description('Compute cluster the training jobs run on (MLOPS_COMPUTE). A new workspace gets it; with an existing workspace it must already exist there (see the README).')
param computeName string = 'cpu-cluster'

@minValue(1)
@maxValue(100)
@description('Maximum nodes of the new workspace\'s training cluster (minimum 0: it scales to zero when idle).')
param computeMaxNodes int = 2

@description('Low-priority VMs for the new workspace\'s training cluster (cheaper; nodes can be preempted).')
param computeLowPriority bool = false

@description('Put the new workspace behind a managed virtual network (AllowOnlyApprovedOutbound), disable its public network access and reach it through private endpoints. The Function App then joins a VNet.')
param isolateWorkspace bool = false

@allowed([
  'Audit'
  'Deny'
  'Disabled'
])
@description('Effect of the built-in policy "Azure Machine Learning Workspaces should disable public network access". Deny blocks a non-isolated workspace.')
param workspacePublicAccessPolicyEffect string = 'Audit'

@minValue(1)
@maxValue(1000)
@description('Flex Consumption scale-out limit.')
param maximumInstanceCount int = 40

var tags = {
  'azd-env-name': environmentName
  app: 'mlops-automation'
}
var token = toLower(uniqueString(subscription().id, environmentName, location))
var useExistingWorkspace = !empty(existingWorkspaceName)
var workspaceResourceGroupName = useExistingWorkspace && !empty(existingWorkspaceResourceGroup) ? existingWorkspaceResourceGroup : rg.name
var workspaceName = useExistingWorkspace ? existingWorkspaceName : 'mlw-${environmentName}-${token}'
var datastoreAccountName = useExistingWorkspace ? existingDatastoreAccountName : 'stml${token}'
// The landing container also appears in subscriptions.json's subject filter; tests check they agree.
var landingContainer = 'landing'
var hasTeamsRoutes = !empty(teamsRoutesBase64)

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

resource workspaceRg 'Microsoft.Resources/resourceGroups@2024-03-01' existing = {
  name: workspaceResourceGroupName
}

module identity 'app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-${environmentName}-${token}'
    location: location
    tags: tags
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${environmentName}-${token}'
    appInsightsName: 'appi-${environmentName}-${token}'
    location: location
    tags: tags
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${token}'
    location: location
    tags: tags
  }
}

module vault 'app/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: 'kv${token}'
    location: location
    tags: tags
    teamsWebhookUrl: teamsWebhookUrl
    teamsRoutesBase64: teamsRoutesBase64
  }
}

module topic 'app/eventgrid-topic.bicep' = {
  name: 'eventgrid-topic'
  scope: rg
  params: {
    name: 'evgt-${environmentName}-${token}'
    location: location
    tags: tags
    identityId: identity.outputs.id
  }
}

module network 'app/network.bicep' = if (isolateWorkspace && !useExistingWorkspace) {
  name: 'network'
  scope: rg
  params: {
    name: 'vnet-${environmentName}-${token}'
    location: location
    tags: tags
  }
}

module workspace 'app/workspace.bicep' = if (!useExistingWorkspace) {
  name: 'workspace'
  scope: rg
  params: {
    name: workspaceName
    location: location
    tags: tags
    token: token
    datastoreAccountName: datastoreAccountName
    landingContainer: landingContainer
    datastoreName: datastoreName
    computeName: computeName
    computeMaxNodes: computeMaxNodes
    computeLowPriority: computeLowPriority
    computeIdentityName: 'id-compute-${environmentName}-${token}'
    principalId: identity.outputs.principalId
    appInsightsId: monitoring.outputs.appInsightsId
    logAnalyticsId: monitoring.outputs.logAnalyticsId
    isolate: isolateWorkspace
    privateEndpointSubnetId: isolateWorkspace ? network.outputs.privateEndpointSubnetId : ''
  }
}

module policy 'app/policy.bicep' = {
  name: 'policy'
  scope: workspaceRg
  params: {
    effect: workspacePublicAccessPolicyEffect
  }
  dependsOn: [
    rg
  ]
}

module systemTopics 'app/system-topics.bicep' = {
  name: 'system-topics'
  scope: workspaceRg
  params: {
    tags: tags
    workspaceName: workspaceName
    datastoreAccountName: datastoreAccountName
    identityId: identity.outputs.id
  }
  dependsOn: [
    workspace
  ]
}

module app 'app/functionapp.bicep' = {
  name: 'functionapp'
  scope: rg
  params: {
    planName: 'plan-${environmentName}-${token}'
    name: 'func-${environmentName}-${token}'
    location: location
    tags: union(tags, { 'azd-service-name': 'app' })
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: storage.outputs.deploymentContainerName
    appInsightsName: monitoring.outputs.appInsightsName
    maximumInstanceCount: maximumInstanceCount
    subnetId: isolateWorkspace && !useExistingWorkspace ? network.outputs.appSubnetId : ''
    // Secrets reach the app only as Key Vault references, resolved with the app identity (keyVaultReferenceIdentity).
    settings: union({
      MLOPS_BACKEND: 'azure'
      MLOPS_SUBSCRIPTION_ID: subscription().subscriptionId
      MLOPS_RESOURCE_GROUP: workspaceResourceGroupName
      MLOPS_WORKSPACE: workspaceName
      MLOPS_AZURE_CLOUD: environment().name // AzureCloud, AzureUSGovernment or AzureChinaCloud: MLClient's cloud names
      MLOPS_DATASTORE: datastoreName
      MLOPS_COMPUTE: computeName
      MLOPS_LANDING_CONTAINER: landingContainer
      MLOPS_DATASTORE_ACCOUNT: datastoreAccountName
      MLOPS_LEDGER__tableServiceUri: storage.outputs.tableEndpoint
      MLOPS_EVENTS__topicEndpointUri: topic.outputs.endpoint
      MLOPS_LOG_ANALYTICS_WORKSPACE_ID: monitoring.outputs.logAnalyticsCustomerId
      MLOPS_METRICS_ENDPOINT: 'https://${location}.metrics.monitor.azure.com'
      MLOPS_TEAMS_WEBHOOK_URL: '@Microsoft.KeyVault(SecretUri=${vault.outputs.teamsSecretUri})'
    }, hasTeamsRoutes ? {
      MLOPS_TEAMS_ROUTES: '@Microsoft.KeyVault(SecretUri=${vault.outputs.teamsRoutesSecretUri})'
    } : {})
  }
}

// Roles in the app's resource group: every principal is the app's user-assigned identity.
module roles 'app/roles.bicep' = {
  name: 'roles'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    topicName: topic.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
    logAnalyticsName: monitoring.outputs.logAnalyticsName
    vaultName: vault.outputs.name
    teamsSecretName: vault.outputs.teamsSecretName
    teamsRoutesSecretName: vault.outputs.teamsRoutesSecretName
    hasTeamsRoutes: hasTeamsRoutes
  }
}

// Roles on the workspace and its landing data, wherever the workspace lives.
module workspaceRoles 'app/roles-workspace.bicep' = {
  name: 'roles-workspace'
  scope: workspaceRg
  params: {
    principalId: identity.outputs.principalId
    workspaceName: workspaceName
    datastoreAccountName: datastoreAccountName
    landingContainer: landingContainer
  }
  dependsOn: [
    workspace
  ]
}

// azd stores these in the environment; the postdeploy hook reads them. No output carries a key or secret.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = app.outputs.name
output AZURE_FUNCTION_APP_HOSTNAME string = app.outputs.defaultHostName
output AZURE_APP_IDENTITY_NAME string = identity.outputs.name
output AZURE_APP_STORAGE_NAME string = storage.outputs.name
output AZURE_EVENTGRID_TOPIC_NAME string = topic.outputs.name
output AZURE_ML_WORKSPACE_NAME string = workspaceName
output AZURE_ML_RESOURCE_GROUP string = workspaceResourceGroupName
output AZURE_ML_SYSTEM_TOPIC_NAME string = systemTopics.outputs.mlTopicName
output AZURE_STORAGE_SYSTEM_TOPIC_NAME string = systemTopics.outputs.storageTopicName
