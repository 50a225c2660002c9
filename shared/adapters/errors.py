"""Translate azure-core / SDK exceptions into the app's error tree (shared/errors.py).

Rules (issue #4): 429, 503, 5xx, connection failures, timeouts and a token the credential could not get (no HTTP
status) are TransientError (Event Grid redelivers); a Retry-After the service sent is kept, capped to what is left
of the function's time budget; any other 4xx is a PermanentError carrying the service's own message (404 → NotFound,
409/412 → Conflict, the rest ServiceRejected).
"""
from __future__ import annotations

import contextlib
import email.utils
import logging
import math
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone

from shared.errors import Conflict, MLOpsError, NotFound, ServiceRejected, Throttled, TransientError

logger = logging.getLogger(__name__)

# Azure Functions Flex Consumption's default functionTimeout is 30 min, but an Event Grid delivery gives up after
# 30 s anyway, so waiting longer in-process than this never helps: the event comes back on Event Grid's schedule.
DEFAULT_BUDGET_SECONDS = 20.0
MAX_RETRY_AFTER_SECONDS = 3600.0
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def retry_after_seconds(headers: Mapping[str, str] | None, *, now: datetime | None = None) -> float | None:
    """Seconds the service asked us to wait: ``retry-after-ms`` / ``x-ms-retry-after-ms`` (Azure), then
    ``Retry-After`` as seconds or as an HTTP date. None when absent or unreadable; capped at an hour."""
    if not headers:
        return None
    lower = {str(k).lower(): str(v) for k, v in headers.items()}
    for name, scale in (("retry-after-ms", 1000.0), ("x-ms-retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = lower.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) / scale
        except ValueError:
            if scale != 1.0:
                continue
            try:
                when = email.utils.parsedate_to_datetime(raw)
            except (TypeError, ValueError):
                continue
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            value = (when - (now or datetime.now(timezone.utc))).total_seconds()
        if math.isnan(value) or math.isinf(value):
            continue
        return min(max(value, 0.0), MAX_RETRY_AFTER_SECONDS)
    return None


def service_message(exc: BaseException) -> str:
    """The service's own message: the ``error.message`` of an ARM/OData error body when present."""
    error = getattr(exc, "error", None)  # azure-core ODataV4Format
    if error is not None:
        code, message = getattr(error, "code", None), getattr(error, "message", None)
        if message:
            return f"{code}: {message}" if code else str(message)
    message = getattr(exc, "message", None) or str(exc)
    return str(message).strip().splitlines()[0] if str(message).strip() else type(exc).__name__


def translate(exc: BaseException, *, what: str = "", deadline: float | None = None) -> MLOpsError:
    """The app error for an SDK exception. ``what`` names the call (e.g. "get job train-x"); ``deadline`` is a
    ``time.monotonic()`` instant after which this invocation must be done, so a Retry-After never outlives it."""
    from azure.core import exceptions as az

    if isinstance(exc, MLOpsError):
        return exc
    prefix = f"{what}: " if what else ""
    status = getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    if status is None and response is not None:
        status = getattr(response, "status_code", None)
    if isinstance(exc, (az.ServiceRequestError, az.ServiceResponseError, TimeoutError, ConnectionError)) and status is None:
        return TransientError(f"{prefix}{type(exc).__name__}: {service_message(exc)}")
    if isinstance(exc, az.IncompleteReadError):  # the peer closed the connection mid-body: a network failure
        return TransientError(f"{prefix}{type(exc).__name__}: {service_message(exc)}")
    if isinstance(exc, az.ClientAuthenticationError) and status is None:
        # No HTTP status: no token could be had at all. DefaultAzureCredential reports every failure of its chain
        # this way, the managed identity endpoint being briefly unreachable on a cold start included, so it is
        # retried (Event Grid redelivers, then dead-letters) rather than dropping the event for good.
        return TransientError(f"{prefix}no access token: {service_message(exc)}")
    if isinstance(exc, az.ClientAuthenticationError) and status in (401, 403):
        return ServiceRejected(f"{prefix}not authorised: {service_message(exc)}", status=status)
    if status is None:
        if isinstance(exc, az.ResourceNotFoundError):
            return NotFound(f"{prefix}{service_message(exc)}")
        if isinstance(exc, (az.ResourceExistsError, az.ResourceModifiedError)):
            return Conflict(f"{prefix}{service_message(exc)}")
        return ServiceRejected(f"{prefix}{type(exc).__name__}: {service_message(exc)}")
    message = f"{prefix}HTTP {status}: {service_message(exc)}"
    if status in TRANSIENT_STATUSES or status >= 500:
        wait = retry_after_seconds(getattr(response, "headers", None))
        if wait is not None and deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        if status in (429, 503):
            return Throttled(message, retry_after=wait)
        return TransientError(message)
    if status == 404:
        return NotFound(message)
    if status in (409, 412):
        return Conflict(message)
    return ServiceRejected(message, status=status)


@contextlib.contextmanager
def translated(what: str, *, deadline: float | None = None) -> Iterator[None]:
    """``with translated("create job x"):`` re-raises azure-core errors (and timeouts) as the app's errors."""
    from azure.core.exceptions import AzureError

    try:
        yield
    except MLOpsError:
        raise
    except (AzureError, TimeoutError, ConnectionError) as exc:
        err = translate(exc, what=what, deadline=deadline)
        logger.debug("%s failed: %s -> %s", what, type(exc).__name__, type(err).__name__)
        raise err from exc
