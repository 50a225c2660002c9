"""Keep credentials out of what the app stores and shows: ledger reasons, audit records, alerts, HTTP answers.

A SAS token (``sig=``), a function key (``code=``) or an account key can reach us inside a blob URL, an event
subject or an error message that quotes one. ``redact`` masks their values wherever they appear in a text.
"""
from __future__ import annotations

import re

MASK = "REDACTED"
# Names of query parameters and connection-string parts whose value is a secret.
_SECRET_NAMES = r"sig|signature|code|key|token|access_token|password|secret|client_secret|accountkey|sharedaccesskey"
_ASSIGNMENT = re.compile(rf"(?i)\b({_SECRET_NAMES})(\s*[=:]\s*)([^&;\s'\"<>,]+)")


def redact(text: str) -> str:
    """``text`` with the value of every ``sig=``, ``code=``, ``AccountKey=`` ... replaced by REDACTED."""
    return _ASSIGNMENT.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
