"""The app's identity, offline: a token credential from azure-identity's own defaults, and no key anywhere."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from shared.adapters import identity
from shared.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_credential_is_default_azure_credential_with_azure_identitys_own_defaults(monkeypatch):
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    monkeypatch.setenv("AZURE_CLIENT_ID", "11111111-2222-3333-4444-555555555555")
    cred = identity.credential(Settings())
    assert isinstance(cred, DefaultAzureCredential) and hasattr(cred, "get_token")
    assert any(isinstance(c, ManagedIdentityCredential) for c in cred.credentials)
    # Passing managed_identity_client_id=None would override AZURE_CLIENT_ID: nothing is passed at all.
    assert identity.credential_options(Settings()) == {}


def test_a_sovereign_cloud_authority_and_a_named_identity_are_passed_when_settings_carry_them():
    settings = SimpleNamespace(authority_host="login.microsoftonline.us", identity_client_id=" abc ")
    assert identity.credential_options(settings) == {"authority": "login.microsoftonline.us",
                                                     "managed_identity_client_id": "abc"}
    assert identity.authority_host(Settings()) == ""
    assert type(identity.credential(settings)).__name__ == "DefaultAzureCredential"


def test_the_table_client_is_built_on_the_token_credential_itself():
    from shared.adapters.tables import service_client

    cred = identity.credential(Settings())
    assert service_client("https://acct.table.core.windows.net", cred).credential is cred


KEYED = re.compile(r"AccountKey|from_connection_string|AzureNamedKeyCredential|AzureKeyCredential|"
                   r"AzureSasCredential|generate_sas|SharedAccessSignature\(|account_key")


def test_no_adapter_builds_a_client_from_a_key_or_a_connection_string():
    for name in ("identity", "tables", "events"):
        source = (ROOT / "shared" / "adapters" / f"{name}.py").read_text()
        code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("#"))
        assert not KEYED.findall(code), f"shared/adapters/{name}.py mentions {KEYED.findall(code)}"


def test_importing_the_identity_module_does_not_import_azure_identity():
    code = "import sys, shared.adapters.identity; print('azure.identity' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
