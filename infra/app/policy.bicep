// Governance: the built-in policy "Azure Machine Learning Workspaces should disable public network access",
// assigned to the workspace's resource group with its effect as a parameter.
param effect string

// Built-in definition 438c38d2-3772-465a-a9cc-7a6666a275ce: Azure Machine Learning Workspaces should disable public network access (Audit | Deny | Disabled).
var definitionId = tenantResourceId('Microsoft.Authorization/policyDefinitions', '438c38d2-3772-465a-a9cc-7a6666a275ce')

resource assignment 'Microsoft.Authorization/policyAssignments@2024-04-01' = {
  name: 'ml-workspace-no-public-network'
  properties: {
    displayName: 'Azure ML workspaces must disable public network access'
    policyDefinitionId: definitionId
    enforcementMode: 'Default'
    parameters: {
      effect: {
        value: effect
      }
    }
  }
}

output id string = assignment.id
