"""The head of a landed blob, read with the app's managed identity (azure-storage-blob), for the data contract.

One ranged GET of the first ``max_bytes`` (shared/datacontract.py reads no more), so validating a 10 GB file costs
what validating an 8 MB one does. A folder (the ``_SUCCESS`` marker registers one) is read through its first data
blob. SDK errors become the app's error tree (shared/adapters/errors.py): a 403 is permanent, a timeout transient.
"""
from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote, urlsplit

from shared.adapters.errors import translated
from shared.datacontract import MAX_HEAD_BYTES, Head
from shared.errors import InvalidPayload

logger = logging.getLogger(__name__)


def _total_size(properties) -> int | None:
    """The whole blob's size: a ranged download's ``size`` is the range's, its Content-Range ends with the total."""
    content_range = getattr(properties, "content_range", None) or ""
    total = content_range.rpartition("/")[2]
    return int(total) if total.isdigit() else getattr(properties, "size", None)


class BlobLandingReader:
    """``head(url)`` for blob URLs of the landing container; ``options`` reach every client (transport, ...)."""

    def __init__(self, credential: Any, **options: Any) -> None:
        from shared import retry

        self.credential = credential
        # The app's retry policy and the invocation's deadline (shared/retry.py), not azure-storage-blob's
        # ExponentialRetry, whose 15 s and longer waits outlast Event Grid's 30 s.
        options.setdefault("retry_policy", retry.storage_policy())
        self.options = options

    def head(self, path: str, max_bytes: int = MAX_HEAD_BYTES) -> Head:
        from azure.storage.blob import BlobClient, ContainerClient

        if path.endswith("/"):
            container = ContainerClient.from_container_url(self._container_url(path), credential=self.credential,
                                                           **self.options)
            prefix = self._blob_name(path)
            with translated(f"listing {path}"):
                names = sorted(b.name for b in container.list_blobs(name_starts_with=prefix)
                               if not any(p.startswith(("_", ".")) for p in b.name[len(prefix):].split("/")))
            if not names:
                raise InvalidPayload("the landed folder holds no data file", field="data")
            path = path + names[0][len(prefix):]
        client = BlobClient.from_blob_url(path, credential=self.credential, **self.options)
        with translated(f"reading the head of {client.blob_name}"):
            stream = client.download_blob(offset=0, length=max_bytes)
            data = stream.readall()
            size = _total_size(stream.properties)
        logger.info("read %d of %s bytes of %s", len(data), size, client.blob_name)
        return Head(name=client.blob_name, data=data, size=size)

    @staticmethod
    def _split(url: str) -> tuple[str, str]:
        """(container URL, blob name prefix) of a folder URL, path-style (Azurite, IP hosts) or account-style."""
        parts = urlsplit(url)
        segments = parts.path.lstrip("/").split("/")
        host = parts.hostname or ""
        path_style = host.replace(".", "").isdigit() or host == "localhost"
        lead = 2 if path_style else 1  # account/container or container
        base = f"{parts.scheme}://{parts.netloc}/{'/'.join(segments[:lead])}"
        return base, unquote("/".join(segments[lead:]))

    def _container_url(self, url: str) -> str:
        return self._split(url)[0]

    def _blob_name(self, url: str) -> str:
        return self._split(url)[1]
