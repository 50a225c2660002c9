"""Ground truth landed → live AUC / log loss of what the endpoint served → degradation → the drift policy.

``labels_landed`` handles a LabelsLanded event (a file under ``<landing>/<asset>-labels/<date>/``): it reads the
labels, joins them with the predictions the endpoint of ``asset`` served (by the collector's correlation id or the
documented id column, shared/drift/degradation.py), and compares each serving deployment's live AUC with its model's
training AUC (the ``metric_auc`` tag set at registration). A drop beyond ``MLOPS_DEGRADATION_TOLERANCE`` raises a
``model_degraded`` alert (its own card) and hands a DriftDetected (source and rule ``mlops-degradation``) to the
same rollback-or-retrain policy as drift, as a follow-up under this event's claim: at most once per labels file.

Where the served predictions come from: on the local backend, the embedded server's request log (inputs with their
id column, and outputs, per request); on Azure, the collector's JSONL of each deployment of the endpoint over the
labels folder's day (shared/drift/collected.py).
"""
from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

from shared.bus import Handled
from shared.config import Settings
from shared.domain import Alert
from shared.drift.degradation import CORRELATION_ID, DEGRADED, evaluate, read_labels
from shared.errors import InvalidPayload, NotFound
from shared.messages import DriftDetected, LabelsLanded

logger = logging.getLogger(__name__)

SOURCE = "mlops-degradation"
ALERT_KIND = "model_degraded"


def served_predictions(workspace, endpoint: str, key: str, ids: set[str]) -> dict[str, tuple[str, float]]:
    """{id: (deployment, prediction)} of the labelled cases the endpoint served, newest answer per id, from the
    embedded workspace's request log. Rows are matched by ``key`` in the inputs (the correlation id is not kept
    there, so only the id column joins locally)."""
    if key == CORRELATION_ID:
        return {}
    db = sqlite3.connect(Path(workspace.root) / "workspace.db", timeout=30)
    try:
        try:
            rows = db.execute("SELECT deployment, inputs, outputs FROM requests WHERE endpoint = ? AND status >= 200 "
                              "AND status < 300 ORDER BY id", (endpoint,)).fetchall()
        except sqlite3.OperationalError:  # nothing was ever served
            return {}
    finally:
        db.close()
    out: dict[str, tuple[str, float]] = {}
    for deployment, inputs, outputs in rows:
        served_in, served_out = json.loads(inputs), json.loads(outputs or "[]")
        if len(served_in) != len(served_out):
            continue
        for row, score in zip(served_in, served_out, strict=True):
            ident = str(row.get(key, "")) if isinstance(row, dict) else ""
            if ident in ids:
                try:
                    out[ident] = (deployment or "", float(score))
                except (TypeError, ValueError):
                    continue
    return out


def labels_landed(msg: LabelsLanded, *, workspace, settings: Settings, notifier, audit, clock,
                  collected=None) -> Handled:
    """``collected`` (azure backend: shared/drift/collected.CollectedData) reads the labels blob and the
    collector's data; without it the embedded workspace's files and request log are read."""
    from shared.handlers import _audit

    endpoint_name = settings.endpoint_for(msg.asset)
    local = collected is None and hasattr(workspace, "local_path")
    if collected is None and not local:
        reason = (f"labels {msg.path} for {endpoint_name}: no collected data to join them with "
                  "(MLOPS_DRIFT_CONTAINER_URL is not set)")
        _audit(audit, clock, msg, "record", reason, facts={"endpoint": endpoint_name, "labels": msg.path})
        return Handled("ignored", reason)
    endpoint = workspace.get_endpoint(endpoint_name)
    if endpoint is None:
        reason = f"labels for {msg.asset}, but endpoint {endpoint_name} does not exist"
        _audit(audit, clock, msg, "record", reason, facts={"endpoint": endpoint_name, "labels": msg.path})
        return Handled("ignored", reason)
    try:
        if local:
            with open(workspace.local_path(msg.path), newline="", encoding="utf-8") as f:
                key, labels = read_labels(f)
        else:
            key, labels = read_labels(collected.labels_lines(msg.path))
    except FileNotFoundError:
        raise NotFound(f"labels file {msg.path} is gone") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidPayload(f"labels file {msg.path}: {error}", field="labels") from None
    if local:
        served = served_predictions(workspace, endpoint_name, key, set(labels))
    else:
        from shared.drift.collected import served_window

        start, end = served_window(msg.version, clock())
        served = collected.served(endpoint_name, [d.name for d in endpoint.deployments], key, set(labels),
                                  start, end)
    results = {}
    for deployment in sorted({d for d, _ in served.values()}):
        found = endpoint.deployment(deployment)
        if found is None:
            continue
        model = workspace.get_model(found.model_name, found.model_version)
        ids = [i for i, (d, _) in served.items() if d == deployment]
        verdict = evaluate([labels[i] for i in ids], [served[i][1] for i in ids], model.metrics(),
                           tolerance=settings.drift.degradation_tolerance, min_rows=settings.drift.min_rows)
        results[deployment] = (model, verdict)
    facts = {"endpoint": endpoint_name, "labels": msg.path, "id_column": key, "labelled": len(labels),
             "joined": len(served),
             "deployments": {d: {"model": f"{m.name}:{m.version}", "status": v.status, "rows": v.rows,
                                 "live_auc": v.live_auc, "train_auc": v.train_auc, "live_logloss": v.live_logloss,
                                 "train_logloss": v.train_logloss, "reason": v.reason}
                             for d, (m, v) in results.items()}}
    degraded = sorted(((d, m, v) for d, (m, v) in results.items() if v.status == DEGRADED),
                      key=lambda t: -(t[2].drop or 0.0))
    if not degraded:
        summary = "; ".join(f"{d}: {v.status} ({v.reason})" for d, (_, v) in results.items()) or \
            f"none of {len(labels)} labels matched a served prediction"
        _audit(audit, clock, msg, "record", f"labels for {endpoint_name}: {summary}", facts=facts)
        return Handled("ignored", summary, data=facts)
    deployment, model, verdict = degraded[0]
    title = f"Model degraded: {endpoint_name}/{deployment}"
    summary = (f"{model.name}:{model.version} on {deployment}: {verdict.reason} over {verdict.rows} labelled "
               f"predictions. The drift policy decides what to do (rollback or retrain).")
    _audit(audit, clock, msg, "degraded", summary, facts=facts)
    notifier.notify(Alert(kind=ALERT_KIND, severity="warning", title=title, summary=summary, facts=(
        ("Endpoint", endpoint_name), ("Deployment", deployment), ("Model", f"{model.name}:{model.version}"),
        ("Live AUC", f"{verdict.live_auc:.3f}"), ("Training AUC", f"{verdict.train_auc:.3f}"),
        ("AUC drop", f"{verdict.drop:.3f} (tolerance {verdict.tolerance:g})"),
        ("Live logloss", f"{verdict.live_logloss:.3f}"),
        ("Training logloss", "—" if verdict.train_logloss is None else f"{verdict.train_logloss:.3f}"),
        ("Labelled predictions", str(verdict.rows)), ("Labels", msg.path)),
        incident_key=f"degradation:{endpoint_name}", event_id=msg.event_id))
    follow = DriftDetected(event_id=msg.event_id, endpoint=endpoint_name, deployment=deployment, asset=msg.asset,
                           source=SOURCE, rule=SOURCE, metric="auc", value=round(verdict.live_auc, 4),
                           threshold=round(verdict.train_auc - verdict.tolerance, 4),
                           description=f"degradation: {verdict.reason}")
    return Handled("done", summary, follow_ups=(follow,), data=facts)
