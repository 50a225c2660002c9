#!/bin/sh
# azd postdeploy hook: runs after the code is deployed, because an Event Grid subscription to a function
# (endpointType AzureFunction) is validated against that deployed function, and the action group's webhook
# needs the monitor_alert function key. Deploys infra/app/postdeploy.bicep into the app resource group.
# Needs: az CLI signed in to the same subscription (azd passes its environment values as variables).
# On Flex Consumption the function list can show only WarmUp until the host's triggers are synced
# (Azure/azure-functions-host#10169), so the hook asks for a sync (POST .../host/default/sync) before waiting, and
# again while the functions are missing.
set -eu

: "${AZURE_RESOURCE_GROUP:?run through azd (azd up / azd deploy)}"
: "${AZURE_FUNCTION_APP_NAME:?}"
: "${AZURE_FUNCTION_APP_HOSTNAME:?}"
: "${AZURE_APP_IDENTITY_NAME:?}"
: "${AZURE_APP_STORAGE_NAME:?}"
: "${AZURE_EVENTGRID_TOPIC_NAME:?}"
: "${AZURE_ML_SYSTEM_TOPIC_NAME:?}"
: "${AZURE_STORAGE_SYSTEM_TOPIC_NAME:?}"
: "${AZURE_ML_RESOURCE_GROUP:?}"

here=$(cd "$(dirname "$0")" && pwd)
infra=$(dirname "$here")
if [ -n "${AZURE_SUBSCRIPTION_ID:-}" ]; then az account set --subscription "$AZURE_SUBSCRIPTION_ID"; fi

poll_seconds=${MLOPS_HOOK_POLL_SECONDS:-10}
app_id=$(az functionapp show -g "$AZURE_RESOURCE_GROUP" -n "$AZURE_FUNCTION_APP_NAME" --query id -o tsv)
sync_triggers() {
  # az rest prefixes a resource id with the ARM endpoint of the signed-in cloud.
  az rest --method post --url "$app_id/host/default/sync?api-version=2024-04-01" >/dev/null 2>&1 \
    || echo "trigger sync request failed; still waiting for the function list" >&2
}

# The functions named in subscriptions.json, plus monitor_alert, must be indexed by the host before we go on.
wanted=$(python3 -c 'import json,sys; print(" ".join(sorted({s["function"] for s in json.load(open(sys.argv[1]))["subscriptions"]} | {"monitor_alert"})))' "$infra/subscriptions.json")
echo "waiting for functions: $wanted"
sync_triggers
attempt=0
while :; do
  deployed=$(az functionapp function list -g "$AZURE_RESOURCE_GROUP" -n "$AZURE_FUNCTION_APP_NAME" --query "[].name" -o tsv 2>/dev/null | sed 's|.*/||' || true)
  missing=""
  for f in $wanted; do
    echo "$deployed" | grep -qx "$f" || missing="$missing $f"
  done
  [ -z "$missing" ] && break
  attempt=$((attempt + 1))
  if [ "$attempt" -ge 30 ]; then echo "functions not indexed after 30 attempts:$missing" >&2; exit 1; fi
  # Ask again now and then: a sync sent while the host was still starting can be lost.
  if [ $((attempt % 3)) -eq 0 ]; then sync_triggers; fi
  sleep "$poll_seconds"
done

# The webhook URL embeds a function key: it goes only into a private, temporary parameters file.
umask 077
params=$(mktemp)
trap 'rm -f "$params"' EXIT INT TERM
# With an alerts app registration (secure webhook) no function key goes anywhere; otherwise the keyed webhook.
if [ -n "${MLOPS_ALERT_APP_OBJECT_ID:-}" ] && [ -n "${MLOPS_ALERT_APP_IDENTIFIER_URI:-}" ]; then
  key=""
else
  key=$(az functionapp function keys list -g "$AZURE_RESOURCE_GROUP" -n "$AZURE_FUNCTION_APP_NAME" \
    --function-name monitor_alert --query default -o tsv)
  [ -n "$key" ] || { echo "no default key for monitor_alert" >&2; exit 1; }
fi
python3 - "$params" "$key" <<'PY'
import json, os, sys
path, key = sys.argv[1], sys.argv[2]
e = os.environ
values = {
    "functionAppName": e["AZURE_FUNCTION_APP_NAME"],
    "identityName": e["AZURE_APP_IDENTITY_NAME"],
    "storageAccountName": e["AZURE_APP_STORAGE_NAME"],
    "customTopicName": e["AZURE_EVENTGRID_TOPIC_NAME"],
    "mlSystemTopicName": e["AZURE_ML_SYSTEM_TOPIC_NAME"],
    "storageSystemTopicName": e["AZURE_STORAGE_SYSTEM_TOPIC_NAME"],
    "systemTopicsResourceGroup": e["AZURE_ML_RESOURCE_GROUP"],
    "storageSystemTopicResourceGroup": e.get("AZURE_STORAGE_SYSTEM_TOPIC_RESOURCE_GROUP") or e["AZURE_ML_RESOURCE_GROUP"],
    # azd stores bool outputs as "true"/"false"; a missing value (an older provision) means the topic was created.
    "mlSystemTopicCreated": e.get("AZURE_ML_SYSTEM_TOPIC_CREATED", "true").lower() != "false",
    "storageSystemTopicCreated": e.get("AZURE_STORAGE_SYSTEM_TOPIC_CREATED", "true").lower() != "false",
}
if key:
    values["alertWebhookUrl"] = f"https://{e['AZURE_FUNCTION_APP_HOSTNAME']}/api/alerts?code={key}"
else:
    values.update(alertAppObjectId=e["MLOPS_ALERT_APP_OBJECT_ID"],
                  alertAppIdentifierUri=e["MLOPS_ALERT_APP_IDENTIFIER_URI"],
                  alertSecureWebhookUrl=f"https://{e['AZURE_FUNCTION_APP_HOSTNAME']}/api/alerts/secure")
doc = {
    "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#",
    "contentVersion": "1.0.0.0",
    "parameters": {k: {"value": v} for k, v in values.items()},
}
with open(path, "w") as f:
    json.dump(doc, f)
PY
unset key

az deployment group create \
  --resource-group "$AZURE_RESOURCE_GROUP" \
  --name "mlops-postdeploy" \
  --template-file "$infra/app/postdeploy.bicep" \
  --parameters "@$params" \
  --query "properties.provisioningState" -o tsv
echo "Event Grid subscriptions and the alert action group are in place."
