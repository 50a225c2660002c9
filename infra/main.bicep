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
@description('azd environment name; names and tags every resource. Names take at most its first 15 characters (workspace names stop at 33), and the token keeps them unique.')
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

@description('Storage account holding the landing data of the existing workspace (its datastore account). Required with existingWorkspaceName: the preprovision hook refuses to go on without it.')
param existingDatastoreAccountName string = ''

@description('Resource group of that storage account (defaults to the workspace\'s resource group).')
param existingDatastoreAccountResourceGroup string = ''

@description('Event Grid allows one system topic per source. Name of the existing system topic of the workspace, if it has one (the preprovision hook finds it): it is reused instead of created.')
param existingMlSystemTopicName string = ''

@description('Name of the existing system topic of the datastore storage account (Defender for Storage malware scanning, for example, creates one), if any: reused instead of created.')
param existingStorageSystemTopicName string = ''

@description('Azure ML datastore the app registers landing data through. A new workspace gets one named "landing".')
param datastoreName string = 'landing'

@minLength(2)
@maxLength(16)
@description('Compute cluster the training jobs run on (MLOPS_COMPUTE; 2-16 characters, Azure ML\'s limit). A new workspace gets it; with an existing workspace it must already exist there (docs/azure.md). "serverless": no cluster, serverless compute.')
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

@description('Give the app a custom role with exactly the Azure ML actions it uses (infra/app-role.json). Needs Microsoft.Authorization/roleDefinitions/write (Owner or User Access Administrator); false: the built-in AzureML Data Scientist instead.')
param useCustomRole bool = true

@description('Application ID URI of an Entra app registration for alerts (created by hand: azd cannot create app registrations). With alertAppRole set, the action group posts to /api/alerts/secure with a token instead of a function key in its URL.')
param alertAppIdentifierUri string = ''

@description('The app role of that registration assigned to the "AzNS AAD Webhook" service principal; the app accepts alerts only with it.')
param alertAppRole string = ''

var tags = {
  'azd-env-name': environmentName
  app: 'mlops-automation'
}
var token = toLower(uniqueString(subscription().id, environmentName, location))
// The environment name as it appears in resource names: lower case, only letters, digits and hyphens (Event Grid
// topics and Azure ML workspaces allow nothing else), at most 15 characters so that 'mlw-<stem>-<token>' stays within
// the workspace limit of 33. The token (13 characters, from the whole name) keeps names of long environments apart.
var stem = take(replace(replace(replace(replace(toLower(environmentName), '_', '-'), '.', '-'), '(', ''), ')', ''), 15)
var useExistingWorkspace = !empty(existingWorkspaceName)
var workspaceResourceGroupName = (useExistingWorkspace && !empty(existingWorkspaceResourceGroup)) ? existingWorkspaceResourceGroup : rg.name
var workspaceName = useExistingWorkspace ? existingWorkspaceName : 'mlw-${stem}-${token}'
var datastoreAccountName = useExistingWorkspace ? existingDatastoreAccountName : 'stml${token}'
var datastoreResourceGroupName = (useExistingWorkspace && !empty(existingDatastoreAccountResourceGroup)) ? existingDatastoreAccountResourceGroup : workspaceResourceGroupName
var useServerless = computeName == 'serverless'
// The landing container also appears in subscriptions.json's subject filter; tests check they agree.
var landingContainer = 'landing'
var hasTeamsRoutes = !empty(teamsRoutesBase64)
var secureAlerts = !empty(alertAppIdentifierUri) && !empty(alertAppRole)
// The app's custom Azure ML role: exactly the actions shared/adapters/azureml.py uses (tests/infra/test_custom_role.py).
var appRole = loadJsonContent('app-role.json')
// AzureML Data Scientist: f6c7c914-8db3-469d-8ca1-694a8f32e121. The fallback when useCustomRole is false.
var azureMLDataScientist = 'f6c7c914-8db3-469d-8ca1-694a8f32e121'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

resource workspaceRg 'Microsoft.Resources/resourceGroups@2024-03-01' existing = {
  name: workspaceResourceGroupName
}

resource datastoreRg 'Microsoft.Resources/resourceGroups@2024-03-01' existing = {
  name: datastoreResourceGroupName
}

resource appRoleDefinition 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (useCustomRole) {
  // A custom role's name is a GUID and its roleName is unique in the tenant: both derive from this environment.
  name: guid(subscription().id, 'mlops-automation-app-role', environmentName, location)
  properties: {
    roleName: '${appRole.roleName} (${stem}-${token})'
    description: appRole.description
    type: 'CustomRole'
    permissions: [
      {
        actions: appRole.actions
        notActions: []
      }
    ]
    assignableScopes: [
      workspaceRg.id
    ]
  }
  dependsOn: [
    rg // the workspace's resource group may be this one, created above: the scope must exist first
  ]
}

module identity 'app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-${stem}-${token}'
    location: location
    tags: tags
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${stem}-${token}'
    appInsightsName: 'appi-${stem}-${token}'
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
    name: 'evgt-${stem}-${token}'
    location: location
    tags: tags
    identityId: identity.outputs.id
  }
}

module network 'app/network.bicep' = if (isolateWorkspace && !useExistingWorkspace) {
  name: 'network'
  scope: rg
  params: {
    name: 'vnet-${stem}-${token}'
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
    createCluster: !useServerless
    computeMaxNodes: computeMaxNodes
    computeLowPriority: computeLowPriority
    computeIdentityName: 'id-compute-${stem}-${token}'
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

// One system topic per source: the workspace's (in its resource group) and the datastore account's (in that account's
// resource group). Each is created, or reused when the source already has one (Event Grid allows only one).
module mlSystemTopic 'app/system-topic.bicep' = {
  name: 'system-topic-ml'
  scope: workspaceRg
  params: {
    source: 'ml'
    sourceName: workspaceName
    existingTopicName: existingMlSystemTopicName
    tags: tags
    identityId: identity.outputs.id
  }
  dependsOn: [
    workspace
  ]
}

module storageSystemTopic 'app/system-topic.bicep' = {
  name: 'system-topic-storage'
  scope: datastoreRg
  params: {
    source: 'storage'
    sourceName: datastoreAccountName
    existingTopicName: existingStorageSystemTopicName
    tags: tags
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
    planName: 'plan-${stem}-${token}'
    name: 'func-${stem}-${token}'
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
      // The cost lever of serverless compute: the Spot job tier (a cluster's own VM priority decides for a cluster).
      MLOPS_LOW_PRIORITY: (useServerless && computeLowPriority) ? 'true' : 'false'
      MLOPS_LANDING_CONTAINER: landingContainer
      MLOPS_DATASTORE_ACCOUNT: datastoreAccountName
      MLOPS_LEDGER__tableServiceUri: storage.outputs.tableEndpoint
      MLOPS_EVENTS__topicEndpointUri: topic.outputs.endpoint
      MLOPS_LOG_ANALYTICS_WORKSPACE_ID: monitoring.outputs.logAnalyticsCustomerId
      // metrics:getBatch answers only for resources in the endpoint's own region: the workspace's (its online
      // endpoints live there), which for an existing workspace need not be the app's.
      MLOPS_METRICS_ENDPOINT: 'https://${mlSystemTopic.outputs.sourceLocation}.metrics.monitor.azure.com'
      MLOPS_TEAMS_WEBHOOK_URL: '@Microsoft.KeyVault(SecretUri=${vault.outputs.teamsSecretUri})'
      // The drift monitor reads what the deployments' data collectors write (workspaceblobstore; docs/drift.md).
      MLOPS_DRIFT_CONTAINER_URL: workspaceRoles.outputs.collectedDataContainerUrl
    }, hasTeamsRoutes ? {
      MLOPS_TEAMS_ROUTES: '@Microsoft.KeyVault(SecretUri=${vault.outputs.teamsRoutesSecretUri})'
    } : {}, secureAlerts ? {
      // The action group's secure webhook: an Entra ID token with this role, checked by the app (no key in the URL).
      MLOPS_ALERT_AUTH: 'entra'
      MLOPS_ALERT_AUDIENCE: alertAppIdentifierUri
      MLOPS_ALERT_ROLE: alertAppRole
      MLOPS_ENTRA_TENANT_ID: tenant().tenantId
    } : {})
  }
  // Key Vault references resolve when the app starts; one that cannot (no Key Vault Secrets User yet) is kept as
  // the literal reference string for up to 24 hours. So the app, its settings included, waits for its roles.
  dependsOn: [
    roles
    workspaceRoles
    datastoreRoles
    subscriptionRoles
  ]
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

// Roles on the workspace, wherever it lives: the Azure ML role, and blob read of the data the online deployments
// collect (the drift monitor reads it).
module workspaceRoles 'app/roles-workspace.bicep' = {
  name: 'roles-workspace'
  scope: workspaceRg
  params: {
    principalId: identity.outputs.principalId
    workspaceName: workspaceName
    mlRoleDefinitionId: useCustomRole ? appRoleDefinition.id : subscriptionResourceId('Microsoft.Authorization/roleDefinitions', azureMLDataScientist)
  }
  dependsOn: [
    workspace
  ]
}

// Read access to the landing container, in the datastore account's resource group.
module datastoreRoles 'app/roles-datastore.bicep' = {
  name: 'roles-datastore'
  scope: datastoreRg
  params: {
    principalId: identity.outputs.principalId
    datastoreAccountName: datastoreAccountName
    landingContainer: landingContainer
  }
  dependsOn: [
    workspace
  ]
}

// Monitoring Reader on the subscription: the metrics batch API (metrics:getBatch) authorizes at subscription scope.
module subscriptionRoles 'app/roles-subscription.bicep' = {
  name: 'roles-subscription'
  params: {
    principalId: identity.outputs.principalId
  }
}

// Online endpoints send their traffic logs (AmlOnlineEndpointTrafficLog, the health evidence of every rollout
// decision) to the app's Log Analytics workspace: a DeployIfNotExists policy adds the diagnostic setting to each
// endpoint the app creates, so the app itself needs no right to write diagnostic settings.
resource endpointLogsDefinition 'Microsoft.Authorization/policyDefinitions@2023-04-01' = {
  name: guid(subscription().id, 'mlops-endpoint-traffic-logs', environmentName, location)
  properties: loadJsonContent('app/endpoint-logs-policy.json')
}

module endpointLogs 'app/endpoint-logs.bicep' = {
  name: 'endpoint-logs'
  scope: workspaceRg
  params: {
    location: location
    policyDefinitionId: endpointLogsDefinition.id
    logAnalyticsId: monitoring.outputs.logAnalyticsId
  }
  dependsOn: [
    rg
  ]
}

module endpointLogsRoles 'app/roles-policy.bicep' = {
  name: 'roles-endpoint-logs'
  scope: rg
  params: {
    policyPrincipalId: endpointLogs.outputs.principalId
    logAnalyticsName: monitoring.outputs.logAnalyticsName
  }
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
output AZURE_ML_SYSTEM_TOPIC_NAME string = mlSystemTopic.outputs.topicName
output AZURE_ML_SYSTEM_TOPIC_CREATED bool = mlSystemTopic.outputs.created
output AZURE_STORAGE_SYSTEM_TOPIC_NAME string = storageSystemTopic.outputs.topicName
output AZURE_STORAGE_SYSTEM_TOPIC_CREATED bool = storageSystemTopic.outputs.created
output AZURE_STORAGE_SYSTEM_TOPIC_RESOURCE_GROUP string = datastoreResourceGroupName
