// Role assignments in the app's resource group. Every principal is the app's user-assigned identity; each role
// is the smallest built-in role that covers what the app (or Event Grid acting as that identity) does.
@description('principalId of the app user-assigned identity (identity.bicep).')
param principalId string
param storageAccountName string
param topicName string
param appInsightsName string
param logAnalyticsName string
param vaultName string
param teamsSecretName string
@description('Name of the MLOPS_TEAMS_ROUTES secret (keyvault.bicep); read only when hasTeamsRoutes is true.')
param teamsRoutesSecretName string
@description('True when the routing-table secret exists (a routing table was given).')
param hasTeamsRoutes bool

// Storage Blob Data Owner: b7e6dc6d-f1e8-4753-8033-0f276bb0955b. AzureWebJobsStorage (host keys, timer
// leases), the Flex deployment package container, and Event Grid dead-lettering with this identity.
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
// Storage Table Data Contributor: 0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3. The ledger tables.
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
// EventGrid Data Sender: d5a91429-5739-47e2-a06b-3470a27159e7. Publishing MLOps.* events to the custom topic.
var eventGridDataSender = 'd5a91429-5739-47e2-a06b-3470a27159e7'
// Monitoring Metrics Publisher: 3913510d-42f4-4e42-8a64-420c390055eb. Telemetry to Application Insights with local auth disabled.
var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'
// Log Analytics Reader: 73c42c96-874c-492b-b04d-ab87d138a893. Queries against MLOPS_LOG_ANALYTICS_WORKSPACE_ID.
var logAnalyticsReader = '73c42c96-874c-492b-b04d-ab87d138a893'
// Key Vault Secrets User: 4633458b-17de-408a-b874-0445c86b69e6. Reading the Teams secrets (each assignment scoped to one secret).
var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource topic 'Microsoft.EventGrid/topics@2025-02-15' existing = {
  name: topicName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: logAnalyticsName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource teamsSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: vault
  name: teamsSecretName
}

resource teamsRoutesSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: vault
  name: teamsRoutesSecretName
}

resource blobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource tableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource topicSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(topic.id, principalId, eventGridDataSender)
  scope: topic
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventGridDataSender)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, principalId, monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource logsReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(logAnalytics.id, principalId, logAnalyticsReader)
  scope: logAnalytics
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', logAnalyticsReader)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(teamsSecret.id, principalId, keyVaultSecretsUser)
  scope: teamsSecret
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource routesSecretUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (hasTeamsRoutes) {
  name: guid(teamsRoutesSecret.id, principalId, keyVaultSecretsUser)
  scope: teamsRoutesSecret
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
