// A new Azure ML workspace with its datastore storage account (holding the `landing` container), its own Key
// Vault, an identity-based `landing` datastore, a scale-to-zero CPU cluster running as its own user-assigned
// identity, write access for that identity and the app identity in the default blob container only
// (roles-artifacts.bicep), and diagnostic logs to Log Analytics. With isolate = true: managed virtual network
// (AllowOnlyApprovedOutbound), public network access disabled and a private endpoint in the app's VNet.
param name string
param location string
param tags object
param token string
param datastoreAccountName string
param landingContainer string
param datastoreName string
param appInsightsId string
param logAnalyticsId string
param isolate bool
param privateEndpointSubnetId string

@description('Compute cluster the training jobs run on (the app setting MLOPS_COMPUTE).')
param computeName string
param computeVmSize string = 'Standard_DS3_v2'
@description('Upper bound of the cluster; it scales to zero when idle.')
param computeMaxNodes int
@description('Low-priority VMs for the cluster: cheaper, but a node can be preempted and its job re-queued.')
param computeLowPriority bool
@description('Name of the cluster\'s user-assigned identity (identity-based access to the datastore account).')
param computeIdentityName string
@description('principalId of the app user-assigned identity (identity.bicep): it uploads each job\'s code snapshot to the default blob datastore.')
param principalId string

// Storage Blob Data Reader: 2a2b9908-6ea1-4ae2-8e65-a410df84e7d1. The training cluster reads its input (the
// identity-based landing datastore: no key, no SAS) and the workspace's blobs on this account. It writes only in
// the default blob container (roles-artifacts.bicep).
var storageBlobDataReader = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'

resource datastoreAccount 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  #checkov:skip=CKV_AZURE_206: LRS by default for the demo datastore; point existingDatastoreAccountName at a GRS/ZRS account for production data
  #checkov:skip=CKV_AZURE_35: producers upload landing data from outside Azure; access is Entra ID only (shared keys off, no anonymous blobs)
  #checkov:skip=CKV_AZURE_59: same reason as CKV_AZURE_35
  #checkov:skip=CKV_AZURE_43: the name is 'stml' + uniqueString(): 17 lowercase alphanumerics; checkov cannot resolve the parameter
  name: datastoreAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: datastoreAccount
  name: 'default'
}

resource landing 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: landingContainer
  properties: {
    publicAccess: 'None'
  }
}

resource workspaceVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  #checkov:skip=CKV_AZURE_109: firewall is Deny with public access Disabled when isolate is true; checkov cannot evaluate the condition
  #checkov:skip=CKV_AZURE_189: public network access is Disabled when isolate is true; checkov cannot evaluate the condition (its check crashes on it)
  name: 'kvml${token}'
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
    publicNetworkAccess: isolate ? 'Disabled' : 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: isolate ? 'Deny' : 'Allow'
    }
  }
}

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-10-01' = {
  #checkov:skip=CKV_AZURE_243: the private endpoint (privateEndpoint below) is created when isolate is true; the policy assignment audits/denies the rest
  name: name
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  sku: {
    name: 'Basic'
    tier: 'Basic'
  }
  properties: {
    friendlyName: name
    storageAccount: datastoreAccount.id
    keyVault: workspaceVault.id
    applicationInsights: appInsightsId
    // The datastore account disables shared keys, so the system datastores use Microsoft Entra ID.
    systemDatastoresAuthMode: 'identity'
    publicNetworkAccess: isolate ? 'Disabled' : 'Enabled'
    managedNetwork: {
      isolationMode: isolate ? 'AllowOnlyApprovedOutbound' : 'Disabled'
    }
    v1LegacyMode: false
  }
}

// Identity-based datastore over the landing container (MLOPS_DATASTORE); no account key or SAS is stored.
resource landingDatastore 'Microsoft.MachineLearningServices/workspaces/datastores@2024-10-01' = {
  parent: workspace
  name: datastoreName
  properties: {
    datastoreType: 'AzureBlob'
    accountName: datastoreAccount.name
    containerName: landing.name
    endpoint: environment().suffixes.storage
    protocol: 'https'
    serviceDataAccessAuthIdentity: 'WorkspaceSystemAssignedIdentity'
    credentials: {
      credentialsType: 'None'
    }
    description: 'Landing data; blobs created here trigger training through Event Grid.'
  }
}

// The identity jobs on the cluster use for identity-based datastores (Azure ML uses the compute's managed identity
// when the datastore stores no credentials). User-assigned, so that its role exists before the cluster does.
resource computeIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: computeIdentityName
  location: location
  tags: tags
}

// Shared keys are disabled on the account, so without this role a job cannot read its input.
resource computeDataReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(datastoreAccount.id, computeIdentity.id, storageBlobDataReader)
  scope: datastoreAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReader)
    principalId: computeIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Write access in the workspace's default blob datastore, workspaceblobstore = the container
// azureml-blobstore-<workspaceId> on the datastore account (the workspace is created without data isolation, which
// would name it <workspaceId>-azureml-blobstore): the cluster writes job outputs there and the app identity the code
// snapshots. Only that container: Storage Blob Data Contributor on the account would also open `landing`.
module artifactWriters 'roles-artifacts.bicep' = {
  name: 'roles-artifacts'
  params: {
    principalId: principalId
    computePrincipalId: computeIdentity.properties.principalId
    datastoreAccountName: datastoreAccount.name
    artifactContainerName: 'azureml-blobstore-${workspace.properties.workspaceId}'
  }
}

resource cluster 'Microsoft.MachineLearningServices/workspaces/computes@2024-10-01' = {
  parent: workspace
  name: computeName
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${computeIdentity.id}': {}
    }
  }
  properties: {
    computeType: 'AmlCompute'
    disableLocalAuth: true
    properties: {
      vmSize: computeVmSize
      vmPriority: computeLowPriority ? 'LowPriority' : 'Dedicated'
      osType: 'Linux'
      enableNodePublicIp: !isolate
      scaleSettings: {
        minNodeCount: 0
        maxNodeCount: computeMaxNodes
        nodeIdleTimeBeforeScaleDown: 'PT10M'
      }
    }
  }
  dependsOn: [
    computeDataReader
    artifactWriters
  ]
}

resource workspaceDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  scope: workspace
  name: 'to-log-analytics'
  properties: {
    workspaceId: logAnalyticsId
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
  }
}

resource privateEndpoint 'Microsoft.Network/privateEndpoints@2024-01-01' = if (isolate) {
  name: 'pe-${name}'
  location: location
  tags: tags
  properties: {
    subnet: {
      id: privateEndpointSubnetId
    }
    privateLinkServiceConnections: [
      {
        name: 'amlworkspace'
        properties: {
          privateLinkServiceId: workspace.id
          groupIds: [
            'amlworkspace'
          ]
        }
      }
    ]
  }
}

resource privateDns 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-01-01' = if (isolate) {
  parent: privateEndpoint
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: 'api'
        properties: {
          privateDnsZoneId: resourceId('Microsoft.Network/privateDnsZones', 'privatelink.api.azureml.ms')
        }
      }
      {
        name: 'notebooks'
        properties: {
          privateDnsZoneId: resourceId('Microsoft.Network/privateDnsZones', 'privatelink.notebooks.azure.net')
        }
      }
    ]
  }
}

output name string = workspace.name
output id string = workspace.id
