"""Throughput of the exactly-once path: events/s through parse → bus → SQLite ledger + audit, first deliveries vs
duplicates, and concurrent claims from several threads. Prints a table; run with `make bench`."""
from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import eventgrid  # noqa: E402
from shared.bootstrap import utcnow  # noqa: E402
from shared.bus import Bus  # noqa: E402
from shared.handlers import event_ignored, model_registered  # noqa: E402
from shared.local import wire  # noqa: E402
from shared.local.ledger import SqliteAuditLog, SqliteLedger  # noqa: E402
from shared.messages import EventIgnored, ModelRegistered  # noqa: E402


class Quiet:
    """A notifier that drops alerts: the benchmark measures the bookkeeping, not a channel."""

    def notify(self, alert) -> None:
        pass


def make_bus(home: Path) -> Bus:
    audit = SqliteAuditLog(home / "ledger.db")
    handlers = {ModelRegistered: lambda m: model_registered(m, audit=audit, clock=utcnow),
                EventIgnored: event_ignored}
    return Bus(handlers, ledger=SqliteLedger(home / "ledger.db"), audit=audit, notifier=Quiet())


def run(n: int, threads: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        bus = make_bus(Path(tmp))
        events = [wire.model_registered("churn-model", f"{i}.1", {"k": "v"}) for i in range(n)]
        chunks = [events[i::threads] for i in range(threads)]

        def deliver(chunk):
            for e in chunk:
                bus.handle(eventgrid.to_message(e))

        def timed() -> float:
            workers = [threading.Thread(target=deliver, args=(c,)) for c in chunks]
            t0 = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            return n / (time.perf_counter() - t0)

        first = timed()
        dup = timed()  # every event again: all duplicates
        stats = bus.ledger.stats()
        assert stats.get("done") == n and stats["duplicates"] == n, stats
        return {"first": first, "duplicate": dup}


def main() -> None:
    n = 2000
    print(f"exactly-once path, {n} ModelRegistered events (parse + ledger claim + audit append + record)")
    print(f"{'threads':>8} {'first delivery ev/s':>20} {'duplicates ev/s':>16}")
    for threads in (1, 2, 4):
        runs = [run(n, threads) for _ in range(3)]
        print(f"{threads:>8} {statistics.median(r['first'] for r in runs):>20,.0f} "
              f"{statistics.median(r['duplicate'] for r in runs):>16,.0f}")


if __name__ == "__main__":
    main()
