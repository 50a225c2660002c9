#!/bin/sh
# azd preprovision hook: checks what main.bicep cannot check itself, before anything is created, and finds what
# it must reuse.
# - With an existing workspace (MLOPS_EXISTING_WORKSPACE), its datastore storage account must be named
#   (MLOPS_EXISTING_DATASTORE_ACCOUNT): the landing container, its system topic and the app's read access live there.
# - Event Grid allows one system topic per source. When the existing workspace or storage account already has one
#   (Defender for Storage malware scanning creates one, for example), its name goes into the azd environment
#   (MLOPS_EXISTING_ML_SYSTEM_TOPIC / MLOPS_EXISTING_STORAGE_SYSTEM_TOPIC) so that main.bicep reuses it.
# Needs: az CLI signed in to the target subscription when an existing workspace is used; nothing otherwise.
set -eu

if [ -z "${MLOPS_EXISTING_WORKSPACE:-}" ]; then
  exit 0  # a new workspace and storage account: nothing exists yet to check or reuse
fi
if [ -z "${MLOPS_EXISTING_DATASTORE_ACCOUNT:-}" ]; then
  echo "MLOPS_EXISTING_WORKSPACE is set but MLOPS_EXISTING_DATASTORE_ACCOUNT is not: name the storage account that" \
       "holds the workspace's landing container (azd env set MLOPS_EXISTING_DATASTORE_ACCOUNT <account>)." >&2
  exit 1
fi
if [ -n "${AZURE_SUBSCRIPTION_ID:-}" ]; then az account set --subscription "$AZURE_SUBSCRIPTION_ID"; fi

ws_rg=${MLOPS_EXISTING_WORKSPACE_RESOURCE_GROUP:-${AZURE_RESOURCE_GROUP:-rg-${AZURE_ENV_NAME:?}}}
st_rg=${MLOPS_EXISTING_DATASTORE_ACCOUNT_RESOURCE_GROUP:-$ws_rg}

# The system topic whose source is the given resource, in the given resource group; empty when there is none.
topic_of() {
  az eventgrid system-topic list -g "$1" --query "[?source=='$2'].name | [0]" -o tsv 2>/dev/null || true
}

ws_id=$(az ml workspace show -n "$MLOPS_EXISTING_WORKSPACE" -g "$ws_rg" --query id -o tsv) || {
  echo "workspace $MLOPS_EXISTING_WORKSPACE not found in resource group $ws_rg" >&2; exit 1; }
st_id=$(az storage account show -n "$MLOPS_EXISTING_DATASTORE_ACCOUNT" -g "$st_rg" --query id -o tsv) || {
  echo "storage account $MLOPS_EXISTING_DATASTORE_ACCOUNT not found in resource group $st_rg" >&2; exit 1; }

if [ -z "${MLOPS_EXISTING_ML_SYSTEM_TOPIC:-}" ]; then
  topic=$(topic_of "$ws_rg" "$ws_id")
  if [ -n "$topic" ]; then
    echo "reusing the workspace's system topic $topic"
    azd env set MLOPS_EXISTING_ML_SYSTEM_TOPIC "$topic"
  fi
fi
if [ -z "${MLOPS_EXISTING_STORAGE_SYSTEM_TOPIC:-}" ]; then
  topic=$(topic_of "$st_rg" "$st_id")
  if [ -n "$topic" ]; then
    echo "reusing the storage account's system topic $topic"
    azd env set MLOPS_EXISTING_STORAGE_SYSTEM_TOPIC "$topic"
  fi
fi
