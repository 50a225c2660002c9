"""Azurite's Table (and Blob) service as a pytest fixture: a real Storage emulator on a free loopback port, in memory.

``azurite`` (session scope) starts ``node_modules/.bin/azurite-table`` once and stops it at the end; each test
asks it for a fresh table. ``start_azurite(https=..., oauth=True)`` starts another instance that accepts bearer
tokens over HTTPS, for the managed-identity path. Skips only when the Azurite binary is absent (`make setup`
installs it from package.json). ``start_azurite(..., service="blob")`` starts azurite-blob the same way.
"""
from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import json
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
AZURITE_TABLE = ROOT / "node_modules" / ".bin" / "azurite-table"
AZURITE_BLOB = ROOT / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development account and key, published in Microsoft's Azurite documentation ("Use a
# well-known storage account and key"). It opens only a local emulator: it is public, not a secret.
DEV_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
STORAGE_SCOPE = "https://storage.azure.com/.default"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Azurite:
    """A running azurite-table process and how to reach it."""

    endpoint: str  # http(s)://127.0.0.1:<port>/devstoreaccount1
    process: subprocess.Popen
    cert: Path | None = None  # the self-signed certificate of an HTTPS instance
    client_options: dict[str, Any] = field(default_factory=dict)

    def service(self, credential: Any = None, **options: Any):
        """A TableServiceClient; by default authenticated with the well-known development key."""
        from azure.core.credentials import AzureNamedKeyCredential
        from azure.data.tables import TableServiceClient

        credential = credential or AzureNamedKeyCredential(ACCOUNT, DEV_ACCOUNT_KEY)
        return TableServiceClient(self.endpoint, credential=credential, **{**self.client_options, **options})

    def blob_service(self, credential: Any = None, **options: Any):
        """A BlobServiceClient (on an azurite-blob instance); by default with the well-known development key."""
        from azure.core.credentials import AzureNamedKeyCredential
        from azure.storage.blob import BlobServiceClient

        credential = credential or AzureNamedKeyCredential(ACCOUNT, DEV_ACCOUNT_KEY)
        return BlobServiceClient(self.endpoint, credential=credential, **{**self.client_options, **options})

    def fresh_table(self, credential: Any = None, **options: Any):
        """A TableClient on a new, empty table with a unique name."""
        service = self.service(credential, **options)
        name = "t" + uuid.uuid4().hex[:20]
        service.create_table(name)
        return service.get_table_client(name)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_azurite(workdir: Path, *, https: bool = False, oauth: bool = False, timeout: float = 30.0,
                  service: str = "table") -> Azurite:
    """Start azurite-table (or azurite-blob) in memory on a free loopback port and wait until it accepts
    connections."""
    port = _free_port()
    binary = {"table": AZURITE_TABLE, "blob": AZURITE_BLOB}[service]
    args = [str(binary), f"--{service}Host", "127.0.0.1", f"--{service}Port", str(port), "--inMemoryPersistence",
            "--skipApiVersionCheck", "--loose", "--silent", "--disableTelemetry"]
    cert = None
    options: dict[str, Any] = {}
    if https or oauth:  # Azurite accepts bearer tokens only over HTTPS, and azure-core sends them only there
        cert, key = self_signed_certificate(workdir)
        args += ["--cert", str(cert), "--key", str(key)]
        options["connection_verify"] = str(cert)
    if oauth:
        args += ["--oauth", "basic"]
    log = workdir / f"azurite-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(args, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    scheme = "https" if cert else "http"
    instance = Azurite(f"{scheme}://127.0.0.1:{port}/{ACCOUNT}", process, cert, options)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"azurite-{service} exited with {process.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return instance
        time.sleep(0.05)
    instance.stop()
    raise RuntimeError(f"azurite-{service} did not answer on port {port} within {timeout:.0f}s: "
                       f"{log.read_text()[-2000:]}")


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (PEM cert and key), made with the cryptography package."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "azurite-cert.pem", folder / "azurite-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def unsigned_storage_token(*, lifetime: float = 3600.0, audience: str = "https://storage.azure.com",
                           tenant: str = "00000000-0000-0000-0000-000000000000") -> tuple[str, int]:
    """(JWT, expires_on) shaped like an Entra token for Storage. Azurite's ``--oauth basic`` checks issuer,
    audience and lifetime but not the signature, so this stands in for a managed identity's token."""
    now = int(time.time())

    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {"aud": audience, "iss": f"https://sts.windows.net/{tenant}/", "iat": now - 60, "nbf": now - 60,
              "exp": now + int(lifetime), "oid": str(uuid.uuid4()), "tid": tenant}
    return f"{b64({'alg': 'RS256', 'typ': 'JWT'})}.{b64(claims)}.c2lnbmF0dXJl", now + int(lifetime)


class StaticTokenCredential:
    """A TokenCredential (get_token → AccessToken) that hands out one fixed token and records the scopes asked
    for: what a managed identity would do, without Entra."""

    def __init__(self, token: str, expires_on: int) -> None:
        self.token, self.expires_on = token, expires_on
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any):
        from azure.core.credentials import AccessToken

        self.scopes.append(scopes)
        return AccessToken(self.token, self.expires_on)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    """One in-memory Azurite Table service for the whole session (HTTP, development key)."""
    if not AZURITE_TABLE.exists():
        pytest.skip(f"Azurite is not installed ({AZURITE_TABLE.relative_to(ROOT)} missing): run `make setup`")
    instance = start_azurite(tmp_path_factory.mktemp("azurite"))
    yield instance
    instance.stop()
