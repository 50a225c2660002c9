"""Local model monitor: endpoint health and drift of inputs and predictions from the embedded request log, computed
by the same engine as in Azure (shared/drift/engine.py) against the serving model's baseline profile."""
from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from shared.domain import Health
from shared.local import wire

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftReport:
    endpoint: str
    requests: int
    psi: dict[str, float] = field(default_factory=dict)  # feature -> PSI against the training baseline
    threshold: float = 0.2  # the PSI threshold; the other statistics use the engine's defaults
    baseline_from: str = ""  # deployment whose model's baseline was used
    event: dict | None = None  # the MLOps.DriftDetected event emitted, when drifted
    result: object | None = None  # the engine's DriftResult (None when the window was too small to compare)

    @property
    def value(self) -> float:
        """The largest PSI over the features."""
        return max(self.psi.values(), default=0.0)

    @property
    def worst(self) -> list[tuple[str, float]]:
        return sorted(self.psi.items(), key=lambda kv: -kv[1])[:3]

    @property
    def drifted(self) -> bool:
        """Any statistic of any feature (or of the predictions) over its threshold, on enough rows."""
        return bool(self.result is not None and self.result.drifted)

    @property
    def status(self) -> str:
        return self.result.status if self.result is not None else "inconclusive"


def describe(result, limit: int = 3) -> str:
    """'tenure ks 0.312 > 0.1, contract chi2_p 0.000 < 0.001': the top drifted features and the statistic that fired."""
    parts = []
    for feature in result.top(limit):
        metric, value, threshold = feature.signal(result.thresholds)
        parts.append(f"{feature.name} {metric} {value:.3f} {'<' if metric == 'chi2_p' else '>'} {threshold:g}")
    return ", ".join(parts)


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
                    min_requests: int = 50, thresholds=None) -> DriftReport:
        """The logged inputs and predictions of the last ``window_minutes`` against the champion model's baseline
        profile, through the drift engine (PSI at ``threshold``, the other statistics at ``thresholds`` or the
        engine's defaults; fewer than ``min_requests`` rows is inconclusive). Emits one MLOps.DriftDetected event
        carrying per-feature results and the top features when the window drifted."""
        from shared.drift.chart import histogram
        from shared.drift.engine import PREDICTION, Baseline, Thresholds, compare
        from shared.training.score import to_float

        ep = self.workspace.get_endpoint(endpoint)
        if ep is None or not ep.traffic:
            return DriftReport(endpoint=endpoint, requests=0, threshold=threshold)
        champion = max((d for d in ep.deployments), key=lambda d: ep.traffic.get(d.name, 0))
        model = self.workspace.get_model(champion.model_name, champion.model_version)
        baseline = Baseline.from_profile(json.loads((Path(model.path) / "baseline.json").read_text()))
        served = [r for r in self._rows(endpoint, None, window_minutes) if 200 <= int(r["status"]) < 300]
        inputs = [row for r in served for row in json.loads(r["inputs"])]
        outputs = [p for r in served for p in json.loads(r["outputs"] or "[]")]
        if len(inputs) < min_requests:
            return DriftReport(endpoint=endpoint, requests=len(inputs), threshold=threshold,
                               baseline_from=champion.name)
        window = {}
        for name, spec in baseline.profile["features"].items():
            values = [row.get(name) for row in inputs]
            window[name] = [to_float(v) for v in values] if spec["type"] == "numeric" else values
        predictions = [to_float(p) for p in outputs] if len(outputs) == len(inputs) else None
        limits = replace(thresholds or Thresholds(), psi=threshold, min_rows=min_requests)
        result = compare(baseline, window, predictions=predictions, thresholds=limits, workers=1)
        scores = {name: round(f.stats["psi"], 4) for name, f in result.features.items()
                  if name != PREDICTION and f.stats.get("psi") is not None}
        report = DriftReport(endpoint=endpoint, requests=len(inputs), psi=scores, threshold=threshold,
                             baseline_from=champion.name, result=result)
        logger.info("drift check on %s: %s over %d rows%s", endpoint, result.status, len(inputs),
                    f" ({describe(result)})" if result.drifted else "")
        if report.drifted and self.emit is not None:
            top = result.top()
            metric, value, limit = top[0].signal(limits)
            event = wire.custom("MLOps.DriftDetected", f"endpoints/{endpoint}", {
                "endpoint": endpoint, "deployment": "", "metric": metric, "value": value, "threshold": limit,
                "features": {f.name: round(f.stats.get("psi") or 0.0, 4) for f in top}, "monitor": "local-drift",
                "severity": "warning", "requests": len(inputs), "window_minutes": window_minutes,
                "baseline_from": champion.name, "status": result.status,
                "top": [f.to_dict(limits) for f in top],
                "chart": histogram(top[0].name, baseline.specs()[top[0].name],
                                   predictions if top[0].name == PREDICTION else window[top[0].name]),
                "results": {k: f.to_dict(limits) for k, f in result.features.items()},
                "description": "drift: " + describe(result)})
            self.emit(event)
            report = replace(report, event=event)
        return report
