// Key Vault in RBAC mode holding the Teams webhook URL. The app reads it through a Key Vault reference
// (MLOPS_TEAMS_WEBHOOK_URL = @Microsoft.KeyVault(SecretUri=...)) resolved with its user-assigned identity.
param name string
param location string
param tags object

@secure()
param teamsWebhookUrl string

var teamsSecretName = 'teams-webhook-url'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  #checkov:skip=CKV_AZURE_109: Key Vault references of a Flex app without VNet integration resolve over the public endpoint; RBAC-only access
  #checkov:skip=CKV_AZURE_189: same reason as CKV_AZURE_109
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
    enablePurgeProtection: true
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

output name string = vault.name
output teamsSecretName string = teamsSecret.name
// Versionless URI: the app picks up a rotated secret without a redeploy.
output teamsSecretUri string = teamsSecret.properties.secretUri
