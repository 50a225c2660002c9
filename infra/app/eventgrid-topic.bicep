// Custom Event Grid topic for the app's own events (MLOps.*). Publishing needs a Microsoft Entra token
// (EventGrid Data Sender): access keys are disabled.
param name string
param location string
param tags object
@description('User-assigned identity used for dead-lettering (deadLetterWithResourceIdentity).')
param identityId string

resource topic 'Microsoft.EventGrid/topics@2025-02-15' = {
  #checkov:skip=CKV_AZURE_193: the app publishes without VNet integration; local auth is disabled, so only EventGrid Data Sender identities can publish
  name: name
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    inputSchema: 'EventGridSchema'
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
  }
}

output name string = topic.name
output endpoint string = topic.properties.endpoint
