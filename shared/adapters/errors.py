"""Translate azure-core / SDK exceptions into the app's error tree (shared/errors.py).

Rules (issue #4): 429, 503, 5xx, connection failures, timeouts and a token the credential could not get (no HTTP
status) are TransientError (Event Grid redelivers); the Retry-After the service sent is kept (shared/retry.py reads
it and decides whether it is waited out in-process); any other 4xx is a PermanentError carrying the service's own message (404 → NotFound,
409/412 → Conflict, the rest ServiceRejected).
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from shared import retry
from shared.errors import Conflict, MLOpsError, NotFound, ServiceRejected, Throttled, TransientError
from shared.retry import TRANSIENT_STATUSES, retry_after_seconds

logger = logging.getLogger(__name__)

def service_message(exc: BaseException) -> str:
    """The service's own message: the ``error.message`` of an ARM/OData error body when present."""
    error = getattr(exc, "error", None)  # azure-core ODataV4Format
    if error is not None:
        code, message = getattr(error, "code", None), getattr(error, "message", None)
        if message:
            return f"{code}: {message}" if code else str(message)
    message = getattr(exc, "message", None) or str(exc)
    return str(message).strip().splitlines()[0] if str(message).strip() else type(exc).__name__


def translate(exc: BaseException, *, what: str = "") -> MLOpsError:
    """The app error for an SDK exception. ``what`` names the call (e.g. "get job train-x")."""
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
        if status in (429, 503):
            return Throttled(message, retry_after=wait)
        return TransientError(message)
    if status == 404:
        return NotFound(message)
    if status in (409, 412):
        return Conflict(message)
    return ServiceRejected(message, status=status)


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """``with translated("create job x"):`` re-raises azure-core errors (and timeouts) as the app's errors. The
    call is not started once the invocation's deadline is spent (retry.DeadlineExceeded, transient)."""
    from azure.core.exceptions import AzureError

    retry.check(what)
    try:
        yield
    except MLOpsError:
        raise
    except (AzureError, TimeoutError, ConnectionError) as exc:
        err = translate(exc, what=what)
        if isinstance(err, TransientError) and retry.remaining() == 0:
            err = retry.DeadlineExceeded(f"{err} (the invocation's deadline is spent)")
        logger.debug("%s failed: %s -> %s", what, type(exc).__name__, type(err).__name__)
        raise err from exc
