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
import os
import re
import shutil
import sys
import time
import uuid
from datetime import timezone
from pathlib import Path

import httpx

from shared.config import Settings
from shared.domain import OWNER_TAG, OWNER_VALUE, TAG_ACTOR
from shared.local import churn, wire
from shared.local.clock import SimClock
from shared.local.monitor import describe

ASSET = "churn"
ENDPOINT = "churn-endpoint"
MODEL = "churn-model"
EU_ENDPOINT = "churn-eu-endpoint"  # the demo's manual-approval endpoint
APPROVER = "ana@contoso.example"
# The demo's policy, on top of whatever the environment sets: a fast analysis, every surplus deployment retired
# (so v1 goes once v2 is safe), and manual approval on the second endpoint only.
DEMO_POLICY = {"MLOPS_ANALYSIS_MIN_REQUESTS": "20", "MLOPS_RETAIN_KNOWN_GOOD": "0", "MLOPS_RETENTION_MINUTES": "60",
               "MLOPS_APPROVAL": f"auto;{EU_ENDPOINT}=manual", "MLOPS_APPROVERS": APPROVER}


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
        env = {**DEMO_POLICY, **{k: v for k, v in os.environ.items() if k.startswith("MLOPS_")}}
        self.settings = dataclasses.replace(Settings.from_env(env), backend="local", home=home,
                                            approval_auth="easyauth")
        self.stack = local_stack(self.settings, backoff=0.05, duplicate_every=3, clock=self.clock,
                                 alert_stream=self.alerts, easy_auth=True)
        self.rt = self.stack.runtime
        self.ws = self.rt.workspace
        self.http = httpx.Client(base_url=self.stack.host.url, headers={"x-functions-key": self.stack.host.key},
                                 timeout=60)
        self.scoring = httpx.Client(timeout=30)  # one connection for all scoring requests, as a client app keeps
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
        return self.land_asset(ASSET, version, **gen)

    def land_asset(self, asset: str, version: str, **gen) -> dict:
        path = churn.write_csv(self.data_dir / f"{asset}-v{version}.csv", **gen)
        event = self.ws.land(self.settings.landing_container, f"{asset}/{version}/customers.csv", path)
        self.say(f"landed {asset}/{version}/customers.csv ({gen.get('rows')} rows"
                 f"{', label noise %.0f%%' % (100 * gen['label_noise']) if gen.get('label_noise') else ''})")
        return event

    def endpoint(self, name: str = ENDPOINT):
        return self.ws.get_endpoint(name)

    def traffic(self, name: str = ENDPOINT) -> dict[str, int]:
        ep = self.endpoint(name)
        return {k: v for k, v in ep.traffic.items() if v} if ep else {}

    def decisions(self, **match) -> list:
        return [r for r in self.rt.audit.recent(limit=500)
                if all(getattr(r, k) == v for k, v in match.items())]

    def jobs(self) -> list:
        return self.ws.list_jobs(tags={OWNER_TAG: OWNER_VALUE})

    def send_traffic(self, rows: list[dict], batch: int = 10) -> dict[str, int]:
        """Score rows over HTTP in batches, as clients would; returns requests per serving deployment. A request
        the endpoint answers with an error counts under "error" (the controller's analysis reads those too)."""
        ep = self.endpoint()
        served: dict[str, int] = {}
        size = batch
        for i in range(0, len(rows), size):
            batch = rows[i:i + size]
            cols = list(batch[0])
            r = self.scoring.post(ep.scoring_uri, json={"input_data": {
                "columns": cols, "index": list(range(len(batch))), "data": [[row[c] for c in cols] for row in batch]}})
            dep = r.headers.get("azureml-model-deployment", "?") + ("" if r.status_code == 200 else " error")
            served[dep] = served.get(dep, 0) + 1
        return served

    # --- the scenario -----------------------------------------------------------------------------------

    def tick(self, minutes: int | None = None) -> str:
        """Move the simulated clock past a bake period and run one controller tick (the every-minute timer)."""
        from shared.local.cli import tick

        self.clock.advance(minutes=self.settings.policy.bake_minutes if minutes is None else minutes)
        results = tick(self.rt)
        self.settle()
        return ", ".join(f"{k}: {v}" for k, v in results[0].data.get("endpoints", {}).items())

    def healthy_traffic(self, requests: int, seed: int) -> dict[str, int]:
        """One customer per request, as an app scoring its users one by one."""
        return self.send_traffic(churn.feature_rows(requests, seed=seed), batch=1)

    def run(self) -> bool:
        s = self.settings.policy
        print(f"mlops-reflex demo — embedded backend in {self.home}\n  gate: auc ≥ {s.min_primary} and beats the "
              f"stable and any canary; rollout steps {'→'.join(map(str, s.rollout_steps))} % with "
              f"{s.bake_minutes} min bake and ≥ {s.analysis_min_requests} canary requests per analysis; rollback "
              f"window {s.rollback_window_minutes} min; cooldown {s.cooldown_minutes} min; surplus deployments "
              f"retired after {s.retention_minutes} min keeping {s.retain_known_good} known-good; "
              f"approval: {s.approval} ({', '.join(f'{e}={m}' for e, m in s.approval_endpoints) or 'no overrides'}); "
              "every 3rd event delivered twice on purpose")
        v1, v2, v3, v4 = (f"{MODEL}-v{n}" for n in range(1, 5))

        self.stage(1, "churn v1 lands → trained → gate (nothing to compare with) → registered → 100%, the stable")
        first_blob = self.land("1", rows=1500, seed=101, label_noise=0.12)
        self.settle()
        models = self.ws.list_models(MODEL)
        self.check("v1 registered as model version 1", [m.version for m in models] == ["1"],
                   f"models {[m.version for m in models]}")
        self.check("v1 serves 100%", self.traffic() == {v1: 100}, f"traffic {self.traffic()}")

        self.stage(2, "v2 lands → beats the stable → canary 10% → analysis → 50% → analysis → 100%, promoted")
        self.clock.advance(minutes=30)
        self.land("2", rows=6000, seed=102)
        self.settle()
        approve = self.decisions(decision="approve")
        self.check("v2 approved against the stable 1", any(r.facts.get("champion") == f"{MODEL}:1" for r in approve),
                   next((r.reason for r in approve if r.facts.get("champion")), "no approval"))
        self.check(f"v2 starts at {s.rollout_steps[0]}% beside v1", self.traffic() == {v2: s.rollout_steps[0],
                                                                                    v1: 100 - s.rollout_steps[0]},
                   f"traffic {self.traffic()}")
        for weight in s.rollout_steps[1:]:
            served = self.healthy_traffic(s.analysis_min_requests * 100 // self.traffic().get(v2, 1) * 5 // 4,
                                          seed=200 + weight)
            self.say(f"scored customers one by one: {served}")
            self.say(f"tick after {s.bake_minutes} min: {self.tick()}")
            want = {v2: 100} if weight == 100 else {v2: weight, v1: 100 - weight}
            self.check(f"analysis passed: v2 at {weight}%", self.traffic() == want, f"traffic {self.traffic()}")
        state = self.rt.states.load(ENDPOINT)
        self.check("v2 promoted: the stable, known-good; v1 kept as the previous stable",
                   state.stable == v2 and state.previous_stable == v1
                   and self.endpoint().deployment(v2).known_good, f"phase {state.phase.value}, stable {state.stable}")

        self.stage(3, "v3 with corrupted labels → trained → rejected by the gate (recorded, alerted)")
        self.clock.advance(minutes=5)
        self.land("3", rows=4000, seed=103, label_noise=0.5)
        self.settle()
        rejected = [r for r in self.decisions(decision="reject") if r.facts.get("version") == "3"]
        self.check("v3 rejected with the reason", bool(rejected), rejected[0].reason if rejected else "no rejection")
        self.check("v3 not registered", len(self.ws.list_models(MODEL)) == 2)
        self.check("traffic unchanged", self.traffic() == {v2: 100}, f"traffic {self.traffic()}")

        self.stage(4, "v4 lands → canary at 10% → production traffic drifts → drift alert → canary aborted")
        self.clock.advance(minutes=5)
        self.land("4", rows=9000, seed=114)
        self.settle()
        self.check("model 3 (data v4) is the canary at 10%", self.traffic() == {v3: 10, v2: 90},
                   f"traffic {self.traffic()}")
        self.clock.advance(minutes=5)
        served = self.send_traffic(churn.feature_rows(1200, seed=104, drift=0.85))
        self.say(f"scored 1,200 drifted customers in 120 requests over HTTP: {served}")
        report = self.rt.monitor.check_drift(ENDPOINT, threshold=s.drift_psi_threshold)
        self.say(f"monitor: {report.status} over {report.requests} rows; "
                 + (f"drifted: {describe(report.result)}" if report.drifted else f"max PSI {report.value:.2f}"))
        self.settle()
        self.check("drift detected by the monitor", report.drifted and report.event is not None)
        self.check("canary aborted: v2, the stable, back at 100%", self.traffic() == {v2: 100},
                   f"traffic {self.traffic()}")
        dep = self.endpoint().deployment(v3)
        self.check("model 3 marked rolled back (deployment and model)", dep is not None and dep.rolled_back
                   and self.ws.get_model(MODEL, "3").tags.get("mlops_rolled_back") == "true")

        self.stage(5, "v5 lands → canary → its scoring fails (errors injected) → analysis fails twice → aborted")
        self.clock.advance(minutes=5)
        self.land("5", rows=12000, seed=115)
        self.settle()
        self.check("model 4 (data v5) is the canary at 10%", self.traffic() == {v4: 10, v2: 90},
                   f"traffic {self.traffic()}")
        self.ws.inject_errors(ENDPOINT, v4, 0.4)
        for attempt in range(1, s.analysis_failure_limit + 1):
            served = self.healthy_traffic(s.analysis_min_requests * 12, seed=500 + attempt)
            self.say(f"scored customers one by one: {served}; tick: {self.tick()}")
        self.check("canary aborted on failed analysis: v2 at 100%", self.traffic() == {v2: 100},
                   f"traffic {self.traffic()}")
        aborted = self.decisions(decision="abort")
        self.check("the abort names the analysis", bool(aborted) and "error share" in aborted[0].reason,
                   aborted[0].reason if aborted else "no abort")

        self.stage(6, "hours later: deployments no longer needed are retired after the retention period")
        self.clock.advance(minutes=s.rollback_window_minutes + s.retention_minutes)
        self.say(f"tick: {self.tick(0)}")
        self.say(f"tick after {s.retention_minutes} min: {self.tick(s.retention_minutes + 1)}")
        names = sorted(d.name for d in self.endpoint().deployments)
        retired = [x for r in self.decisions(decision="retire") for x in r.facts.get("retired", [])]
        self.check("v1 and the aborted canaries retired; only the stable is left", names == [v2],
                   f"deployments {names}, retired {sorted(retired)}")

        self.stage(7, "a manual-approval endpoint: the model waits until a named person approves it over HTTP")
        self.land_asset("churn-eu", "1", rows=3000, seed=121)
        self.settle()
        eu = self.rt.states.load(EU_ENDPOINT)
        waiting = eu is not None and eu.candidate is not None
        self.check("churn-eu model waits for approval, nothing deployed", waiting and not self.traffic(EU_ENDPOINT),
                   f"phase {eu.phase.value if eu else 'none'}")
        link = f"/api/approvals/{eu.candidate.approval_id}" if waiting else "/api/approvals/none"
        page = httpx.get(self.stack.host.url + link, headers={"X-Local-User": APPROVER}, timeout=30)
        self.say(f"GET {link[:32]}… as {APPROVER} (simulated Easy Auth) → {page.status_code}")
        keyed = httpx.post(self.stack.host.url + link + f"?code={self.stack.host.key}",
                           data={"decision": "approve", "reason": "key only"}, timeout=30)
        self.say(f"POST with the function key and no signed-in person → {keyed.status_code}")
        # As a browser would: the form on the page, posted from the page, with the page's anti-forgery token.
        token = re.search(r"name='token' value='([0-9a-f]+)'", page.text)
        done = httpx.post(self.stack.host.url + link, timeout=60,
                          headers={"X-Local-User": APPROVER, "Referer": self.stack.host.url + link},
                          data={"decision": "approve", "reason": "metrics and lineage reviewed",
                                "token": token.group(1) if token else ""})
        self.say(f"POST approve as {APPROVER} → {done.status_code}")
        self.settle()
        self.check("the approval card links to the page", waiting and eu.candidate.approval_id in self.alerts.getvalue())
        self.check("the page shows the candidate and its lineage", page.status_code == 200
                   and "Approve churn-eu-model:1" in page.text and "train-churn-eu-v1-a1" in page.text)
        self.check("a function key alone cannot approve", keyed.status_code == 401)
        self.check("approved by a named person → deployed at 100%", done.status_code == 202
                   and self.traffic(EU_ENDPOINT) == {"churn-eu-model-v1": 100}, f"traffic {self.traffic(EU_ENDPOINT)}")
        approved = self.ws.get_model("churn-eu-model", "1").tags
        self.check("the model and the audit trail name the approver",
                   approved.get("approved_by") == f"user:{APPROVER}"
                   and any(r.actor == f"user:{APPROVER}" for r in self.decisions(decision="approve_deploy")),
                   f"approved_by {approved.get('approved_by')}")

        self.stage(8, "an Azure Monitor alert with nothing to undo and no new data → held, new data asked for")
        self.clock.advance(hours=4)
        alert = common_alert(ENDPOINT)
        r = self.http.post("/api/alerts", json=alert)
        self.say(f"POST /api/alerts (common alert schema) → {r.status_code}")
        self.settle()
        held = [d for d in self.decisions(decision="hold") if "land new data" in d.reason]
        self.check("held: the stable's data and every newer version were already tried", bool(held),
                   held[0].reason if held else "no hold")

        self.stage(9, "a manual rerun over HTTP through the function, sent twice → exactly one job")
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

        self.stage(10, "events delivered twice change nothing")
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
        for m in sorted(self.ws.list_models(MODEL), key=lambda m: int(m.version)):
            dep = next((d for d in ep.deployments if d.model_version == m.version), None) if ep else None
            t = f"{ep.traffic.get(dep.name, 0)}%" if dep else "—"
            flags = " ROLLED BACK" if m.tags.get("mlops_rolled_back") == "true" else ""
            print(f"  {m.name}:{m.version}{flags}  serving {t}")
            print(f"    data  {m.tags.get('mlops_data_asset')}:{m.tags.get('mlops_data_version')}   "
                  f"job {m.tags.get('mlops_job')}   code {m.tags.get('mlops_code_version')}")
            print(f"    event {m.tags.get('mlops_trigger_event')} (data) → {m.tags.get('mlops_run_event')} (run)")
            if m.tags.get("approved_by"):
                print(f"    approved by {m.tags['approved_by']} at {m.tags.get('approved_at')}")
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

    def delivery(self, budget_seconds: float) -> bool:
        """With Teams configured: wait (within the budget) for the cards still on their way, print the delivery
        summary, and say whether every card reached Teams in time. Without Teams: nothing to check."""
        from shared.local.delivery import drain

        outbox = self.rt.notifier
        router = getattr(outbox, "router", None)
        if router is None or not router.table.urls:
            return True
        summary = drain(outbox, outbox.store, budget_seconds=budget_seconds)
        red, green, plain = ("\033[31m", "\033[32m", "\033[0m") if sys.stdout.isatty() else ("", "", "")
        print("\n=== Delivery")
        for line in summary.lines():
            print(f"{green if summary.ok else red}{line}{plain}")
        return summary.ok

    def close(self) -> None:
        self.scoring.close()
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
    ap.add_argument("--card-budget", type=float, default=60.0, metavar="SECONDS",
                    help="with Teams configured, fail unless every card reaches Teams within this many seconds")
    args = ap.parse_args(argv)
    shutil.rmtree(args.home, ignore_errors=True)
    import logging

    from shared import logs

    logs.setup_local(logging.WARNING)  # JSON lines (docs/observability.md); the story itself is printed
    demo = Demo(args.home, verbose_alerts=args.alerts)
    delivered = False
    try:
        ok = demo.run()
    finally:
        demo.report()
        try:
            delivered = demo.delivery(args.card_budget)
        finally:
            demo.close()
    return 0 if ok and delivered else 1


if __name__ == "__main__":
    sys.exit(main())
