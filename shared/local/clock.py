"""A clock the demo and tests can move forward, so policy windows (minutes, hours) pass in a second."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone


class SimClock:
    """Wall-clock time plus an offset that only grows; callable like ``utcnow``."""

    def __init__(self, start: datetime | None = None) -> None:
        self._offset = timedelta(0)
        self._lock = threading.Lock()
        if start is not None:
            self._offset = start - datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        with self._lock:
            return datetime.now(timezone.utc) + self._offset

    def advance(self, **delta: float) -> datetime:
        """Move forward, e.g. ``advance(hours=4)``; returns the new now."""
        step = timedelta(**delta)
        if step < timedelta(0):
            raise ValueError("time only moves forward")
        with self._lock:
            self._offset += step
        return self()
