// Key Vault in RBAC mode holding the Teams secrets: the default webhook URL and, when given, the routing table
// (whose URLs are webhooks too). The app reads each through a Key Vault reference (MLOPS_TEAMS_WEBHOOK_URL,
// MLOPS_TEAMS_ROUTES = @Microsoft.KeyVault(SecretUri=...)) resolved with its user-assigned identity.
param name string
param location string
param tags object

@secure()
param teamsWebhookUrl string

@secure()
@description('MLOPS_TEAMS_ROUTES as base64 of its JSON (azd substitutes parameters into JSON without escaping quotes). Empty: no routing-table secret.')
param teamsRoutesBase64 string = ''

var teamsSecretName = 'teams-webhook-url'
var teamsRoutesSecretName = 'teams-routes'
var hasTeamsRoutes = !empty(teamsRoutesBase64)

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  #checkov:skip=CKV_AZURE_109: Key Vault references of a Flex app without VNet integration resolve over the public endpoint; RBAC-only access
  #checkov:skip=CKV_AZURE_189: same reason as CKV_AZURE_109
  #checkov:skip=CKV_AZURE_110: purge protection off on purpose: the name is fixed per environment and azd down --purge must free it; the secrets are re-supplied by every azd up
  #checkov:skip=CKV_AZURE_42: soft delete is on (7 days); only purge protection is off, for the reason of CKV_AZURE_110
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
    // No purge protection: the vault's name is fixed per environment (kv<token>), so `azd down` then `azd up` would
    // collide with the soft-deleted vault for the whole retention period. `azd down --purge` purges it instead; the
    // secrets are re-created from the azd environment on every `azd up`, so nothing is lost.
    enablePurgeProtection: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource teamsSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  #checkov:skip=CKV_AZURE_41: a Teams Workflows URL does not expire; an expiry date would silently stop every alert
  parent: vault
  name: teamsSecretName
  properties: {
    value: teamsWebhookUrl
    contentType: 'text/uri-list'
  }
}

resource teamsRoutesSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (hasTeamsRoutes) {
  #checkov:skip=CKV_AZURE_41: the routing table holds Teams Workflows URLs, which do not expire; an expiry date would silently stop routed alerts
  #checkov:skip=CKV_AZURE_114: false positive: contentType is set below; checkov does not read the properties of a conditional (if) resource
  parent: vault
  name: teamsRoutesSecretName
  properties: {
    value: base64ToString(teamsRoutesBase64)
    contentType: 'application/json'
  }
}

output name string = vault.name
output teamsSecretName string = teamsSecret.name
// Versionless URI: the app picks up a rotated secret without a redeploy.
output teamsSecretUri string = teamsSecret.properties.secretUri
// The routing table's secret name and versionless URI, built from the vault's own URI (ends in '/') so that no
// output reads a resource that may not be deployed. main.bicep uses them only when it passes a routing table.
output teamsRoutesSecretName string = teamsRoutesSecretName
output teamsRoutesSecretUri string = '${vault.properties.vaultUri}secrets/${teamsRoutesSecretName}'
