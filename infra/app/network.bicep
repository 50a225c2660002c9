// Only when isolateWorkspace is true: a VNet for the workspace's private endpoint and the Function App's
// outbound VNet integration, with the private DNS zones Azure ML needs.
param name string
param location string
param tags object

var dnsZones = [
  'privatelink.api.azureml.ms'
  'privatelink.notebooks.azure.net'
]

resource vnet 'Microsoft.Network/virtualNetworks@2024-01-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        '10.40.0.0/16'
      ]
    }
    subnets: [
      {
        name: 'snet-private-endpoints'
        properties: {
          addressPrefix: '10.40.1.0/24'
          privateEndpointNetworkPolicies: 'Enabled'
          networkSecurityGroup: {
            id: nsg.id
          }
        }
      }
      {
        // Flex Consumption VNet integration needs a subnet delegated to Microsoft.App/environments.
        name: 'snet-app'
        properties: {
          addressPrefix: '10.40.2.0/24'
          delegations: [
            {
              name: 'flex'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
          networkSecurityGroup: {
            id: nsg.id
          }
        }
      }
    ]
  }
}

resource nsg 'Microsoft.Network/networkSecurityGroups@2024-01-01' = {
  name: 'nsg-${name}'
  location: location
  tags: tags
  properties: {
    securityRules: []
  }
}

resource zones 'Microsoft.Network/privateDnsZones@2020-06-01' = [for zone in dnsZones: {
  name: zone
  location: 'global'
  tags: tags
}]

resource links 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = [for (zone, i) in dnsZones: {
  parent: zones[i]
  name: 'link-${name}'
  location: 'global'
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnet.id
    }
  }
}]

output vnetId string = vnet.id
output privateEndpointSubnetId string = '${vnet.id}/subnets/snet-private-endpoints'
output appSubnetId string = '${vnet.id}/subnets/snet-app'
