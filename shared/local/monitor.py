"""Local model monitor: endpoint health and input drift (PSI per feature) from the embedded request log."""
from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from shared.domain import Health
from shared.local import wire

logger = logging.getLogger(__name__)
EPS = 1e-4  # floor for empty bins: PSI is undefined for a zero share


@dataclass(frozen=True)
class DriftReport:
    endpoint: str
    requests: int
    psi: dict[str, float] = field(default_factory=dict)  # feature -> PSI against the training baseline
    threshold: float = 0.2
    baseline_from: str = ""  # deployment whose model's baseline was used
    event: dict | None = None  # the MLOps.DriftDetected event emitted, when drifted

    @property
    def value(self) -> float:
        return max(self.psi.values(), default=0.0)

    @property
    def worst(self) -> list[tuple[str, float]]:
        return sorted(self.psi.items(), key=lambda kv: -kv[1])[:3]

    @property
    def drifted(self) -> bool:
        return self.value > self.threshold


def psi(expected: list[float], actual: list[float]) -> float:
    """Population stability index of two share vectors over the same bins."""
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, EPS), max(a, EPS)
        total += (a - e) * math.log(a / e)
    return total


def feature_psi(spec: dict, values: list) -> float:
    """PSI of one feature's logged values against its baseline spec (numeric edges or category shares)."""
    n = len(values)
    if spec["type"] == "numeric":
        import bisect

        edges = spec["edges"]
        counts = [0] * (len(edges) + 1)
        seen = 0
        for v in values:
            try:
                x = float(v)
            except (TypeError, ValueError):
                continue
            if math.isnan(x):
                continue
            counts[bisect.bisect_right(edges, x)] += 1
            seen += 1
        return psi(spec["shares"], [c / seen for c in counts]) if seen else 0.0
    cats = list(spec["shares"])
    counts = {c: 0 for c in cats}
    other = 0
    for v in values:
        if str(v) in counts:
            counts[str(v)] += 1
        else:
            other += 1
    # A category never seen in training is its own bin with an expected share of ~0.
    return psi([spec["shares"][c] for c in cats] + [0.0], [counts[c] / n for c in cats] + [other / n])


class LocalMonitor:
    """Implements the Monitor port on the embedded backend and raises drift like an Azure ML model monitor."""

    def __init__(self, workspace, *, emit: Callable[[dict], object] | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.workspace = workspace
        self.emit = emit
        self.clock = clock or (lambda: datetime.now(timezone.utc))

    def _rows(self, endpoint: str, deployment: str | None, window_minutes: int) -> list[sqlite3.Row]:
        since = (self.clock() - timedelta(minutes=window_minutes)).astimezone(timezone.utc).isoformat()
        db = sqlite3.connect(Path(self.workspace.root) / "workspace.db", timeout=30)
        db.row_factory = sqlite3.Row
        try:
            sql = "SELECT * FROM requests WHERE endpoint = ? AND at >= ?"
            args: list = [endpoint, since]
            if deployment:
                sql += " AND deployment = ?"
                args.append(deployment)
            return db.execute(sql + " ORDER BY id", args).fetchall()
        except sqlite3.OperationalError:  # no request was ever served: the table does not exist yet
            return []
        finally:
            db.close()

    def health(self, endpoint: str, deployment: str | None, window_minutes: int) -> Health:
        rows = self._rows(endpoint, deployment, window_minutes)
        latencies = sorted(float(r["latency_ms"]) for r in rows)
        errors = sum(1 for r in rows if not 200 <= int(r["status"]) < 300)

        def pct(q: float) -> float | None:
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else None

        return Health(endpoint=endpoint, deployment=deployment, window_minutes=window_minutes, requests=len(rows),
                      error_share=errors / len(rows) if rows else 0.0, latency_p50_ms=pct(0.5),
                      latency_p95_ms=pct(0.95))

    def check_drift(self, endpoint: str, *, window_minutes: int = 60, threshold: float = 0.2,
                    min_requests: int = 50) -> DriftReport:
        """PSI of every feature in the logged inputs against the champion model's training baseline; emits one
        MLOps.DriftDetected event when the largest PSI crosses ``threshold``."""
        ep = self.workspace.get_endpoint(endpoint)
        if ep is None or not ep.traffic:
            return DriftReport(endpoint=endpoint, requests=0, threshold=threshold)
        champion = max((d for d in ep.deployments), key=lambda d: ep.traffic.get(d.name, 0))
        model = self.workspace.get_model(champion.model_name, champion.model_version)
        baseline = json.loads((Path(model.path) / "baseline.json").read_text())["features"]
        inputs = [row for r in self._rows(endpoint, None, window_minutes) if 200 <= int(r["status"]) < 300
                  for row in json.loads(r["inputs"])]
        if len(inputs) < min_requests:
            return DriftReport(endpoint=endpoint, requests=len(inputs), threshold=threshold,
                               baseline_from=champion.name)
        scores = {name: round(feature_psi(spec, [row.get(name) for row in inputs]), 4)
                  for name, spec in baseline.items()}
        report = DriftReport(endpoint=endpoint, requests=len(inputs), psi=scores, threshold=threshold,
                             baseline_from=champion.name)
        logger.info("drift check on %s: max PSI %.3f over %d rows (threshold %.2f)", endpoint, report.value,
                    len(inputs), threshold)
        if report.drifted and self.emit is not None:
            event = wire.custom("MLOps.DriftDetected", f"endpoints/{endpoint}", {
                "endpoint": endpoint, "deployment": "", "metric": "psi", "value": report.value,
                "threshold": threshold, "features": dict(report.worst), "monitor": "local-psi",
                "severity": "warning", "requests": len(inputs),
                "description": "input drift: " + ", ".join(f"{k} PSI {v:.2f}" for k, v in report.worst)})
            self.emit(event)
            report = DriftReport(endpoint=endpoint, requests=len(inputs), psi=scores, threshold=threshold,
                                 baseline_from=champion.name, event=event)
        return report
