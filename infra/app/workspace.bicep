// A new Azure ML workspace with its datastore storage account (holding the `landing` container), its own Key
// Vault, an identity-based `landing` datastore, a scale-to-zero CPU cluster running as its own user-assigned
// identity (unless the jobs run on serverless compute), blob write access on the account for that identity (job
// outputs and MLflow artifacts, as Azure ML documents for accounts without shared keys), write access for the app
// identity in the default blob container only (roles-artifacts.bicep), and diagnostic logs to Log Analytics. With
// isolate = true: managed virtual network (AllowOnlyApprovedOutbound, with outbound rules to the package indexes
// the training environment is built from), public network access disabled and a private endpoint in the app's VNet.
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
@description('False when the jobs run on serverless compute (MLOPS_COMPUTE=serverless): no cluster is created.')
param createCluster bool = true
param computeVmSize string = 'Standard_DS3_v2'
@description('Upper bound of the cluster; it scales to zero when idle.')
param computeMaxNodes int
@description('Low-priority VMs for the cluster: cheaper, but a node can be preempted and its job re-queued.')
param computeLowPriority bool
@description('Name of the cluster\'s user-assigned identity (identity-based access to the datastore account).')
param computeIdentityName string
@description('principalId of the app user-assigned identity (identity.bicep): it uploads each job\'s code snapshot to the default blob datastore.')
param principalId string

// Storage Blob Data Contributor: ba92f5b4-2d11-453d-a403-e96b0029c9fe. The training cluster reads its input (the
// identity-based landing datastore: no key, no SAS) and writes its outputs and MLflow artifacts, which go to two
// containers (workspaceblobstore and workspaceartifactstore): Azure ML's documentation for a storage account without
// shared keys gives the compute identity this role on the account.
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'


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
  #checkov:skip=CKV_AZURE_110: purge protection off on purpose: the name is fixed per environment and azd down --purge must free it; Azure ML re-creates what it keeps here
  #checkov:skip=CKV_AZURE_42: soft delete is on (7 days); only purge protection is off, for the reason of CKV_AZURE_110
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
    // No purge protection: the vault's name is fixed per environment, and `azd down --purge` must be able to purge
    // it so that the next `azd up` can create it again; Azure ML re-creates what it keeps here.
    enablePurgeProtection: false
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
    managedNetwork: isolate ? {
      isolationMode: 'AllowOnlyApprovedOutbound'
      // FQDN rules need the managed firewall; Basic is the cheapest SKU that carries them.
      firewallSku: 'Basic'
      // What the training environment (shared/training/conda.yaml, built by Azure ML) downloads from: conda-forge
      // through conda.anaconda.org, pip packages from PyPI. Nothing else leaves the managed network, so each host is
      // an FQDN outbound rule (tests/infra checks these against conda.yaml).
      outboundRules: {
        'conda-forge': {
          type: 'FQDN'
          category: 'UserDefined'
          destination: 'conda.anaconda.org'
        }
        pypi: {
          type: 'FQDN'
          category: 'UserDefined'
          destination: 'pypi.org'
        }
        'pypi-files': {
          type: 'FQDN'
          category: 'UserDefined'
          destination: 'files.pythonhosted.org'
        }
      }
    } : {
      isolationMode: 'Disabled'
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

// Shared keys are disabled on the account, so without this role a job can neither read its input nor write its
// outputs and MLflow artifacts (the workspaceartifactstore container `azureml` as well as workspaceblobstore).
resource computeDataWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (createCluster) {
  name: guid(datastoreAccount.id, computeIdentity.id, storageBlobDataContributor)
  scope: datastoreAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
    principalId: computeIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Write access for the app identity in the workspace's default blob datastore, workspaceblobstore = the container
// azureml-blobstore-<workspaceId> on the datastore account (the workspace is created without data isolation, which
// would name it <workspaceId>-azureml-blobstore): it uploads each job's code snapshot there. Only that container:
// the app never writes anywhere else on this account, which also holds `landing`.
module artifactWriters 'roles-artifacts.bicep' = {
  name: 'roles-artifacts'
  params: {
    principalId: principalId
    datastoreAccountName: datastoreAccount.name
    artifactContainerName: 'azureml-blobstore-${workspace.properties.workspaceId}'
  }
}

resource cluster 'Microsoft.MachineLearningServices/workspaces/computes@2024-10-01' = if (createCluster) {
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
    computeDataWriter
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
