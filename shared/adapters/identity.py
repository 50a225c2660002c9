"""The app's Microsoft Entra identity: one token credential for every Azure client, never a key.

``DefaultAzureCredential`` reads its own environment (azure-identity documents it): AZURE_CLIENT_ID picks the
user-assigned managed identity (``managed_identity_client_id`` defaults to it, and passing None would override
it, so we never pass it unless a setting names one), AZURE_AUTHORITY_HOST picks a sovereign cloud's authority.
This module reads no environment itself: only shared/config.py does.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # azure-identity is imported when a credential is made, not when this module is
    from azure.core.credentials import TokenCredential

logger = logging.getLogger(__name__)


def authority_host(settings: Any) -> str:
    """The Entra authority host the settings name (e.g. ``login.microsoftonline.us``), or "" for azure-identity's
    default (AZURE_AUTHORITY_HOST, else the public cloud). Settings has no such field today: see docs/settings.md."""
    return str(getattr(settings, "authority_host", "") or "").strip()


def credential_options(settings: Any) -> dict[str, str]:
    """Keyword arguments for DefaultAzureCredential. Only what a setting names is passed, so azure-identity's own
    defaults (AZURE_CLIENT_ID for the user-assigned identity) stay in force."""
    options: dict[str, str] = {}
    client_id = str(getattr(settings, "identity_client_id", "") or "").strip()
    if client_id:
        options["managed_identity_client_id"] = client_id
    authority = authority_host(settings)
    if authority:
        options["authority"] = authority
    return options


def credential(settings: Any) -> TokenCredential:
    """A DefaultAzureCredential: the Function App's managed identity in Azure, a developer's login locally."""
    from azure.identity import DefaultAzureCredential

    options = credential_options(settings)
    logger.info("identity: DefaultAzureCredential (%s)", ", ".join(sorted(options)) or "azure-identity defaults")
    return DefaultAzureCredential(**options)
