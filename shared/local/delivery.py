"""Did the cards reach Teams? The demo's delivery summary: cards sent, delivered, failed, and the oldest one still
waiting, each card judged against a delivery budget (seconds from being raised to reaching every webhook)."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.local.outbox import DELIVERED, FAILED, SqliteOutbox
from shared.notify import REJECTED, Outbox

TEAMS = "teams:"


@dataclass(frozen=True)
class DeliverySummary:
    sent: int  # cards routed to at least one Teams webhook
    delivered: int  # reached every webhook they were routed to, within the budget
    late: int  # reached them, but after the budget
    failed: int  # a webhook refused them for good
    waiting: int  # not delivered yet
    oldest_waiting_seconds: float | None  # age of the oldest card still waiting
    budget_seconds: float

    @property
    def ok(self) -> bool:
        return self.late == 0 and self.failed == 0 and self.waiting == 0

    def lines(self) -> list[str]:
        head = (f"Teams delivery: {self.sent} card(s) sent, {self.delivered} delivered within "
                f"{self.budget_seconds:.0f} s, {self.late} late, {self.failed} failed, {self.waiting} not delivered")
        out = [head]
        if self.oldest_waiting_seconds is not None:
            out.append(f"  oldest undelivered card: {self.oldest_waiting_seconds:.0f} s old")
        out.append("  every card reached Teams in time" if self.ok else
                   "  DELIVERY FAILED: cards did not reach Teams within their budget (see the warnings above; "
                   "check MLOPS_TEAMS_WEBHOOK_URL and that the workflow is on)")
        return out


def teams_targets(outbox: Outbox, alert) -> list[str]:
    return [c.key for c in outbox.router.targets(alert) if c.key.startswith(TEAMS)]


def summarize(outbox: Outbox, store: SqliteOutbox, *, budget_seconds: float,
              now: Callable[[], float] = time.time) -> DeliverySummary:
    """Judge every card that was routed to Teams. Times are the store's epoch seconds."""
    sent = delivered = late = failed = waiting = 0
    oldest: float | None = None
    at = now()
    for _, alert, status, queued, reached in store.history():
        keys = teams_targets(outbox, alert)
        if not keys:
            continue
        sent += 1
        if status == FAILED or any(REJECTED + k in reached for k in keys):
            failed += 1
        elif status == DELIVERED or all(k in reached for k in keys):
            took = max(reached.get(k, queued) for k in keys) - queued
            if took <= budget_seconds:
                delivered += 1
            else:
                late += 1
        else:
            waiting += 1
            oldest = max(oldest or 0.0, at - queued)
    return DeliverySummary(sent, delivered, late, failed, waiting, oldest, budget_seconds)


def drain(outbox: Outbox, store: SqliteOutbox, *, budget_seconds: float, now: Callable[[], float] = time.time,
          sleep: Callable[[float], None] = time.sleep) -> DeliverySummary:
    """Deliver what is due until every Teams card is settled or the oldest waiting one is past its budget; then
    the summary."""
    while True:
        outbox.flush(max_seconds=5.0)
        summary = summarize(outbox, store, budget_seconds=budget_seconds, now=now)
        if not summary.waiting or (summary.oldest_waiting_seconds or 0.0) > budget_seconds:
            return summary
        sleep(0.2)


