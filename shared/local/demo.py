"""`make demo`: the whole reflex arc offline, through the local Functions host and the local Event Grid.

Prints a timeline, the lineage and the audit trail; exits non-zero unless every stage reached its expected outcome.
Policy windows (rollback window, cooldown) are crossed by moving a simulated clock; everything else is real:
xgboost trains in subprocesses, models serve over HTTP, events travel as Event Grid payloads over HTTP.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import shutil
import sys
import time
import uuid
from datetime import timezone
from pathlib import Path

import httpx

from shared.config import Settings
from shared.domain import OWNER_TAG, OWNER_VALUE, TAG_ACTOR, TAG_EVENT
from shared.local import churn, wire
from shared.local.clock import SimClock
from shared.local.monitor import describe

ASSET = "churn"
ENDPOINT = "churn-endpoint"
MODEL = "churn-model"


class Demo:
    def __init__(self, home: Path, *, verbose_alerts: bool) -> None:
        from shared.local.cli import local_stack

        self.started = time.perf_counter()
        self.home = home
        self.checks: list[tuple[str, bool, str]] = []
        self.clock = SimClock()
        self.alerts = io.StringIO()
        self.verbose_alerts = verbose_alerts
        # Teams and policy settings come from the environment as usual; the backend is always the embedded one.
        self.settings = dataclasses.replace(Settings.from_env(), backend="local", home=home)
        self.stack = local_stack(self.settings, backoff=0.05, duplicate_every=3, clock=self.clock,
                                 alert_stream=self.alerts)
        self.rt = self.stack.runtime
        self.ws = self.rt.workspace
        self.http = httpx.Client(base_url=self.stack.host.url, headers={"x-functions-key": self.stack.host.key},
                                 timeout=60)
        self.data_dir = home / "generated"
        self._alerts_shown = 0

    # --- plumbing --------------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.started:5.1f}s | {self.clock():%H:%M}] {text}", flush=True)

    def stage(self, n: int, title: str) -> None:
        print(f"\n=== {n}. {title}", flush=True)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append((name, bool(ok), detail))
        print(f"    {'PASS' if ok else 'FAIL'}  {name}{(' — ' + detail) if detail else ''}", flush=True)
        return bool(ok)

    def settle(self, timeout: float = 120.0) -> None:
        """Until nothing moves: deliveries drained, no job queued or running, no new event published."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            self.stack.grid.drain(timeout=max(1.0, deadline - time.monotonic()))
            self.ws.wait_for_jobs(timeout=max(1.0, deadline - time.monotonic()))
            self.stack.grid.drain(timeout=max(1.0, deadline - time.monotonic()))
            stats = self.stack.grid.stats()
            now = (stats.get("published"), stats.get("delivered"), stats.get("dead_lettered"))
            if now == last and not stats.get("pending"):
                break
            last = now
            time.sleep(0.2)
        self.show_alerts()

    def show_alerts(self) -> None:
        text = self.alerts.getvalue()
        new, self._alerts_shown = text[self._alerts_shown:], len(text)
        if not new.strip():
            return
        if self.verbose_alerts:
            print("\n".join("      │ " + line for line in new.rstrip().splitlines()))
        else:
            for line in new.splitlines():
                if line.startswith("[") or line.lstrip().startswith("▶"):
                    print("      alert " + line.strip())

    def land(self, version: str, **gen) -> dict:
        path = churn.write_csv(self.data_dir / f"v{version}.csv", **gen)
        event = self.ws.land(self.settings.landing_container, f"{ASSET}/{version}/customers.csv", path)
        self.say(f"landed {ASSET}/{version}/customers.csv ({gen.get('rows')} rows"
                 f"{', label noise %.0f%%' % (100 * gen['label_noise']) if gen.get('label_noise') else ''})")
        return event

    def endpoint(self):
        return self.ws.get_endpoint(ENDPOINT)

    def traffic(self) -> dict[str, int]:
        ep = self.endpoint()
        return {k: v for k, v in ep.traffic.items() if v} if ep else {}

    def decisions(self, **match) -> list:
        return [r for r in self.rt.audit.recent(limit=500)
                if all(getattr(r, k) == v for k, v in match.items())]

    def jobs(self) -> list:
        return self.ws.list_jobs(tags={OWNER_TAG: OWNER_VALUE})

    def send_traffic(self, rows: list[dict]) -> dict[str, int]:
        """Score rows over HTTP in batches of 10, as clients would; returns requests per serving deployment."""
        ep = self.endpoint()
        served: dict[str, int] = {}
        for i in range(0, len(rows), 10):
            batch = rows[i:i + 10]
            cols = list(batch[0])
            r = httpx.post(ep.scoring_uri, json={"input_data": {"columns": cols, "index": list(range(len(batch))),
                                                                "data": [[row[c] for c in cols] for row in batch]}},
                           timeout=30)
            r.raise_for_status()
            dep = r.headers.get("azureml-model-deployment", "?")
            served[dep] = served.get(dep, 0) + 1
        return served

    # --- the scenario -----------------------------------------------------------------------------------

    def run(self) -> bool:
        s = self.settings.policy
        print(f"mlops-reflex demo — embedded backend in {self.home}, gate: auc ≥ {s.min_primary} and beats the "
              f"champion; new models start at {s.initial_traffic}%; rollback window {s.rollback_window_minutes} min; "
              f"cooldown {s.cooldown_minutes} min; every 3rd event delivered twice on purpose")

        self.stage(1, "churn v1 lands → trained → gate (no champion) → registered → deployed at 100%")
        first_blob = self.land("1", rows=1500, seed=101, label_noise=0.12)
        self.settle()
        v1 = self.ws.list_models(MODEL)
        self.check("v1 registered", [m.version for m in v1] == ["1.1"], f"models {[m.version for m in v1]}")
        self.check("v1 serves 100%", self.traffic() == {"v1-1": 100}, f"traffic {self.traffic()}")

        self.stage(2, "v2 lands → trained → beats the champion → deployed beside v1 at the initial share")
        self.clock.advance(minutes=30)
        self.land("2", rows=6000, seed=102)
        self.settle()
        approve = self.decisions(decision="approve")
        self.check("v2 approved against champion 1.1",
                   any(r.facts.get("champion") == f"{MODEL}:1.1" for r in approve),
                   next((r.reason for r in approve if r.facts.get("champion")), "no approval"))
        expected = {"v2-1": s.initial_traffic, "v1-1": 100 - s.initial_traffic}
        self.check(f"v2 at {s.initial_traffic}% beside v1", self.traffic() == expected, f"traffic {self.traffic()}")

        self.stage(3, "v3 with corrupted labels → trained → rejected by the gate (recorded, alerted)")
        self.clock.advance(minutes=5)
        self.land("3", rows=4000, seed=103, label_noise=0.5)
        self.settle()
        rejected = [r for r in self.decisions(decision="reject") if r.facts.get("version") == "3"]
        self.check("v3 rejected with the reason", bool(rejected), rejected[0].reason if rejected else "no rejection")
        self.check("v3 not registered", "3.1" not in [m.version for m in self.ws.list_models(MODEL)])
        self.check("traffic unchanged", self.traffic() == expected, f"traffic {self.traffic()}")

        self.stage(4, "production traffic drifts shortly after the v2 rollout → drift alert → rollback to v1")
        self.clock.advance(minutes=10)
        served = self.send_traffic(churn.feature_rows(400, seed=104, drift=0.85))
        self.say(f"scored 400 drifted customers in 40 requests over HTTP: {served}")
        report = self.rt.monitor.check_drift(ENDPOINT, threshold=s.drift_psi_threshold)
        self.say(f"monitor: {report.status} over {report.requests} rows; "
                 + (f"drifted: {describe(report.result)}" if report.drifted else f"max PSI {report.value:.2f}"))
        self.settle()
        self.check("drift detected by the monitor", report.drifted and report.event is not None)
        self.check("rolled back to v1 at 100%", self.traffic() == {"v1-1": 100}, f"traffic {self.traffic()}")
        dep = self.endpoint().deployment("v2-1")
        model2 = self.ws.get_model(MODEL, "2.1")
        self.check("v2 marked rolled back (deployment and model)",
                   dep is not None and dep.rolled_back and model2.tags.get("mlops_rolled_back") == "true")

        self.stage(5, "hours later, an Azure Monitor alert with no recent rollout → retraining on the newest data")
        self.clock.advance(hours=4)
        alert = common_alert(ENDPOINT)
        r = self.http.post("/api/alerts", json=alert)
        self.say(f"POST /api/alerts (common alert schema) → {r.status_code}")
        self.settle()
        retrain = [j for j in self.jobs() if j.tags.get(TAG_EVENT, "").startswith(alert["data"]["essentials"]["alertId"])]
        self.check("retraining started on churn:3 (newest) as attempt 2",
                   [j.name for j in retrain] == ["train-churn-v3-a2"], f"jobs {[j.name for j in retrain]}")

        self.stage(6, "a manual rerun over HTTP through the function, sent twice → exactly one job")
        self.clock.advance(minutes=5)
        body = {"job": "train-churn-v2-a1", "reason": "rerun after fixing the feature pipeline",
                "requested_by": "alice@contoso.example"}
        first, second = self.http.post("/api/reruns", json=body), self.http.post("/api/reruns", json=body)
        self.say(f"POST /api/reruns twice → {first.status_code} {first.json().get('job')} created="
                 f"{first.json().get('created')}; {second.status_code} {second.json().get('job')} created="
                 f"{second.json().get('created')}")
        bad = self.http.post("/api/reruns", json={"asset": "churn"})
        self.say(f"POST /api/reruns without a version → {bad.status_code} {bad.json()}")
        self.settle()
        reruns = [j for j in self.jobs() if j.tags.get(TAG_ACTOR, "").startswith("http:")]
        self.check("two requests, one job", first.status_code == second.status_code == 202
                   and first.json()["job"] == second.json()["job"] and len(reruns) == 1,
                   f"jobs {[j.name for j in reruns]}")
        self.check("bad request names the field", bad.status_code == 400 and bad.json().get("field") == "version")

        self.stage(7, "events delivered twice change nothing")
        before = self.footprint()
        for event in (first_blob, first_blob, *self.late_run_events()):
            self.stack.grid.publish(event)  # first_blob: the very same event id again, as an Event Grid retry
        self.settle()
        after = self.footprint()
        ledger = self.rt.ledger.stats()
        self.check("no job, model, deployment or decision added", before == after, json.dumps(after))
        self.check("duplicates skipped by the ledger", ledger.get("duplicates", 0) > 0, json.dumps(ledger))
        self.check("nothing dead-lettered", self.stack.grid.stats().get("dead_lettered", 0) == 0,
                   json.dumps(self.stack.grid.stats()))
        return all(ok for _, ok, _ in self.checks)

    def late_run_events(self) -> list[dict]:
        """New events about a completion already handled (a late RunCompleted and a RunStatusChanged for v2's first
        job): other event ids, same fact, so only the job-level claim stops them."""
        job = self.ws.get_job("train-churn-v2-a1")
        return [wire.run_completed(job.name, experiment="mlops-automation", tags=job.tags),
                wire.run_status_changed(job.name, "completed", experiment="mlops-automation", tags=job.tags)]

    def footprint(self) -> dict:
        ep = self.endpoint()
        return {"jobs": len(self.jobs()), "models": len(self.ws.list_models(MODEL)),
                "deployments": len(ep.deployments) if ep else 0, "traffic": self.traffic(),
                "decisions": len([r for r in self.rt.audit.recent(limit=1000) if r.decision != "observe"])}

    # --- the report ------------------------------------------------------------------------------------

    def report(self) -> None:
        print("\n=== Lineage")
        ep = self.endpoint()
        for m in sorted(self.ws.list_models(MODEL), key=lambda m: m.version):
            dep = next((d for d in ep.deployments if d.model_version == m.version), None) if ep else None
            t = f"{ep.traffic.get(dep.name, 0)}%" if dep else "—"
            flags = " ROLLED BACK" if m.tags.get("mlops_rolled_back") == "true" else ""
            print(f"  {m.name}:{m.version}{flags}  serving {t}")
            print(f"    data  {m.tags.get('mlops_data_asset')}:{m.tags.get('mlops_data_version')}   "
                  f"job {m.tags.get('mlops_job')}   code {m.tags.get('mlops_code_version')}")
            print(f"    event {m.tags.get('mlops_trigger_event')} (data) → {m.tags.get('mlops_run_event')} (run)")
            print(f"    auc {float(m.tags.get('metric_auc', 'nan')):.4f}  logloss "
                  f"{float(m.tags.get('metric_logloss', 'nan')):.4f}  gate: {m.tags.get('mlops_gate_reason')}")
        print("\n=== Audit trail (oldest first)")
        for r in reversed(self.rt.audit.recent(limit=1000)):
            at = r.at.astimezone(timezone.utc).strftime("%H:%M:%S") if r.at else "--:--:--"
            print(f"  {at}  {r.actor[:22]:<22} {r.message:<15} {r.decision:<15} {r.reason[:110]}")
        print("\n=== Ledger", json.dumps(self.rt.ledger.stats()), " Event Grid", json.dumps(self.stack.grid.stats()))
        failed = [name for name, ok, _ in self.checks if not ok]
        took = time.perf_counter() - self.started
        print(f"\n{len(self.checks) - len(failed)} passed, {len(failed)} failed — demo took {took:.1f} s")
        for name in failed:
            print(f"  FAILED: {name}")

    def close(self) -> None:
        self.http.close()
        self.stack.close()


def common_alert(endpoint: str) -> dict:
    """An Azure Monitor metric alert on the endpoint in the common alert schema, as an action group posts it."""
    alert_id = f"/subscriptions/{wire.LOCAL_SUBSCRIPTION}/providers/Microsoft.AlertsManagement/alerts/{uuid.uuid4()}"
    return {"schemaId": "azureMonitorCommonAlertSchema", "data": {
        "essentials": {"alertId": alert_id, "alertRule": "churn-endpoint-latency", "severity": "Sev2",
                       "signalType": "Metric", "monitorCondition": "Fired", "monitoringService": "Platform",
                       "alertTargetIDs": [f"/subscriptions/{wire.LOCAL_SUBSCRIPTION}/resourcegroups/{wire.LOCAL_GROUP}"
                                          f"/providers/microsoft.machinelearningservices/workspaces/local"
                                          f"/onlineendpoints/{endpoint}"],
                       "description": "p95 latency above 500 ms for 15 minutes", "essentialsVersion": "1.0",
                       "alertContextVersion": "1.0"},
        "alertContext": {"condition": {"windowSize": "PT15M", "allOf": [
            {"metricName": "RequestLatency_P95", "metricValue": 742.0, "threshold": "500", "operator": "GreaterThan"}]}}}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the whole scenario offline.")
    ap.add_argument("--home", type=Path, default=Path(".demo"), help="state folder, recreated on each run")
    ap.add_argument("--alerts", action="store_true", help="print every alert in full, as the console channel renders it")
    args = ap.parse_args(argv)
    shutil.rmtree(args.home, ignore_errors=True)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    demo = Demo(args.home, verbose_alerts=args.alerts)
    try:
        ok = demo.run()
    finally:
        demo.report()
        demo.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
