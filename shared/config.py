"""Settings: the only module that reads the environment. Every name starts with MLOPS_."""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shared.datacontract import Contract
from shared.errors import InvalidPayload

# Metrics train.py logs (shared/training/train.py evaluate): the gate ranks by a higher-is-better one and guards
# with lower-is-better ones.
HIGHER_IS_BETTER = ("auc", "accuracy", "precision", "recall", "f1")
LOWER_IS_BETTER = ("logloss",)


@dataclass(frozen=True)
class Problem:
    """One missing or invalid setting. ``severity`` error stops the app; warning is a degraded but working app."""

    setting: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return self.message


class SettingsError(InvalidPayload):
    """Every invalid or missing setting at once (``problems``); ``field`` names the first."""

    def __init__(self, problems: list[Problem], settings: Settings | None = None) -> None:
        self.problems = list(problems)
        # What was read, with the default in place of each bad value: lets check() also name what the backend
        # still lacks, so the first round of fixes is the last.
        self.settings = settings
        super().__init__(describe(self.problems), field=self.problems[0].setting if self.problems else None)


def describe(problems: list[Problem]) -> str:
    """One message naming every problem: a single one on one line, several as a list."""
    errors = [p for p in problems if p.severity == "error"]
    if len(errors) == 1:
        return errors[0].message
    return f"{len(errors)} settings are missing or invalid:\n" + "\n".join(f"  - {p.message}" for p in errors)


# Public-cloud defaults; sovereign clouds override them through the settings below.
PUBLIC_LOGS_ENDPOINT = "https://api.loganalytics.io/v1"
PUBLIC_STUDIO_URL = "https://ml.azure.com"
AZURE_CLOUDS = ("AzureCloud", "AzureUSGovernment", "AzureChinaCloud")  # Bicep's environment().name gives these


@dataclass(frozen=True)
class Policy:
    """Knobs of every automatic decision. Pure data: policy.py reads it, nothing writes it."""

    primary_metric: str = "auc"  # metric the gate ranks models by (higher is better); default auc
    min_primary: float = 0.70  # absolute floor the primary metric must clear; default 0.70
    min_improvement: float = 0.0  # margin over the champion's primary metric, absolute; default 0.0
    guard_metrics: tuple[str, ...] = ("logloss",)  # lower-is-better metrics that must not regress; default logloss
    guard_tolerance: float = 0.02  # allowed regression of each guard metric, absolute; default 0.02
    rollback_window_minutes: int = 120  # a traffic change younger than this makes drift roll back; default 120
    cooldown_minutes: int = 30  # after an automatic change, drift on that endpoint is only recorded; default 30
    max_attempts: int = 3  # training attempts per data version, counting the first; default 3
    drift_psi_threshold: float = 0.2  # PSI above which a feature counts as drifted (local monitor); default 0.2
    freeze: bool = False  # stop every automatic change but still alert; default off
    # Progressive delivery (shared/rollout.py)
    rollout_steps: tuple[int, ...] = (10, 50, 100)  # canary's share of live traffic per step, percent; last is 100
    bake_minutes: int = 10  # minutes a step runs before its analysis counts; default 10
    analysis_min_requests: int = 100  # canary requests a step needs, fewer is inconclusive; default 100
    analysis_error_tolerance: float = 0.02  # canary error share may exceed the stable's by this (absolute); 0.02
    analysis_latency_tolerance: float = 0.25  # canary p95 may exceed the stable's by this fraction; default 0.25
    analysis_latency_floor_ms: float = 50.0  # p95 differences below this never fail analysis (noise); default 50
    analysis_max_wait_minutes: int = 60  # inconclusive this long: the rollout holds and alerts; default 60
    analysis_failure_limit: int = 2  # failed analyses that abort a rollout; default 2
    retention_minutes: int = 1440  # a surplus deployment is deleted after this long; default 1440 (24 h)
    retain_known_good: int = 1  # known-good deployments kept besides the stable; default 1
    approval: str = "auto"  # auto | manual: whether a gate-approved model waits for a named person; default auto
    approval_endpoints: tuple[tuple[str, str], ...] = ()  # per-endpoint overrides (endpoint, auto|manual)
    approval_ttl_hours: int = 168  # an approval link expires after this long; default 168 (7 days)
    retrain_budget: int = 3  # drift-triggered retraining runs per endpoint per 24 h; default 3

    def approval_for(self, endpoint: str) -> str:
        """The approval policy of one endpoint: its override, else the default."""
        return dict(self.approval_endpoints).get(endpoint, self.approval)


@dataclass(frozen=True)
class DriftSettings:
    """The Azure drift monitor (shared/drift/monitor.py): its window, where collected data is read, the statistics'
    thresholds (PSI: Policy.drift_psi_threshold) and the minimum sample. docs/drift.md explains each."""

    interval_minutes: int = 60  # window length and cadence; divides a day (10, 15, 20, 30, 60, ..., 1440); default 60
    container_url: str = ""  # blob container the data collector writes to (workspaceblobstore); empty: monitor off
    min_rows: int = 100  # fewer usable window values: inconclusive, never drift; default 100
    ks_threshold: float = 0.1  # two-sample KS statistic; default 0.1
    wasserstein_threshold: float = 0.1  # W1 / baseline standard deviation; default 0.1
    js_threshold: float = 0.1  # Jensen-Shannon distance, base 2; default 0.1
    chi2_p: float = 0.001  # chi-squared p-value (with Cramér's V >= 0.1); default 0.001
    max_rows: int = 2_000_000  # rows one check reads; a larger window is truncated and says so; default 2,000,000
    # collected input JSONL of one window (summed from the blob listing, before any row is read) above which the
    # check runs as an Azure ML command job on the training cluster instead of in the function; default 256 MB
    offload_mb: int = 256
    degradation_tolerance: float = 0.05  # live AUC this far below the training AUC is degradation; default 0.05

    def thresholds(self, psi: float):
        from shared.drift.engine import Thresholds

        return Thresholds(psi=psi, ks=self.ks_threshold, wasserstein=self.wasserstein_threshold,
                          js=self.js_threshold, chi2_p=self.chi2_p, min_rows=self.min_rows)


@dataclass(frozen=True)
class Settings:
    """Everything the app is configured with. Built once by ``from_env``; immutable."""

    backend: str = "local"  # local | azure
    home: Path = Path(".mlops")  # embedded backend state (SQLite, files)
    # Azure ML workspace
    subscription_id: str = ""
    resource_group: str = ""
    workspace: str = ""
    azure_cloud: str = "AzureCloud"  # AzureCloud | AzureUSGovernment | AzureChinaCloud (MLClient's cloud names)
    compute: str = "cpu-cluster"
    low_priority: bool = False
    max_run_seconds: int = 3600
    environment: str = ""  # empty: built from shared/training/conda.yaml (xgboost, mlflow, azureml-mlflow)
    datastore: str = "workspaceblobstore"
    landing_container: str = "landing"
    datastore_account: str = ""  # storage account of the landing datastore; BlobCreated from others is refused
    model_name: str = "{asset}-model"  # template, formatted with the data asset name
    endpoint_name: str = "{asset}-endpoint"  # template, formatted with the data asset name
    instance_type: str = "Standard_DS3_v2"
    code_version: str = ""  # defaults to the hash of shared/training when empty
    # Other Azure services (identity-based; endpoints have public-cloud defaults)
    ledger_table_uri: str = ""  # MLOPS_LEDGER__tableServiceUri
    topic_endpoint: str = ""  # MLOPS_EVENTS__topicEndpointUri
    log_analytics_workspace_id: str = ""
    logs_endpoint: str = PUBLIC_LOGS_ENDPOINT
    metrics_endpoint: str = ""  # regional, e.g. https://westeurope.metrics.monitor.azure.com
    studio_url: str = PUBLIC_STUDIO_URL
    status_url: str = ""  # public URL of GET /api/status, for links in alerts
    # Teams
    teams_webhook_url: str = ""
    teams_routes: str = ""  # JSON routing table, see docs/teams.md
    teams_failures_only: bool = False
    # Approvals (App Service Authentication in front of the app)
    approvers: tuple[str, ...] = ()  # user names, "group:<object id>" or "role:<app role>" allowed to approve
    approval_auth: str = "none"  # none | entra (bearer token checked in the app) | easyauth (App Service auth)
    entra_tenant_id: str = ""  # tenant whose tokens approve (entra)
    entra_audience: str = ""  # the app registration's Application ID URI or client id (entra)
    entra_jwks_url: str = ""  # signing keys; default: the tenant's discovery keys in the app's cloud
    alert_auth: str = "key"  # key (POST /api/alerts with a function key) | entra (the action group's secure webhook)
    alert_audience: str = ""  # the alerts app registration's Application ID URI (entra)
    alert_role: str = ""  # the app role assigned to the action group's service principal (entra)
    public_url: str = ""  # the app's public base URL, for links in cards (approval page)
    contract: Contract = field(default_factory=Contract)  # the training data contract (shared/datacontract.py)
    policy: Policy = field(default_factory=Policy)
    drift: DriftSettings = field(default_factory=DriftSettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read MLOPS_* settings. Every bad value is collected; then one SettingsError names them all."""
        env = os.environ if environ is None else environ
        r = _Reader(env)
        workspace = r.str("MLOPS_WORKSPACE", "")
        backend = _choice(r, "MLOPS_BACKEND", "azure" if workspace else "local", ("local", "azure"))
        d = Policy()
        policy = Policy(
            primary_metric=_metric(r, "MLOPS_PRIMARY_METRIC", d.primary_metric),
            min_primary=r.float("MLOPS_MIN_PRIMARY", d.min_primary),
            min_improvement=r.float("MLOPS_MIN_IMPROVEMENT", d.min_improvement, lo=0.0),
            guard_metrics=tuple(m.strip().lower() for m in r.str("MLOPS_GUARD_METRICS", ",".join(d.guard_metrics))
                                .split(",") if m.strip()),
            guard_tolerance=r.float("MLOPS_GUARD_TOLERANCE", d.guard_tolerance, lo=0.0),
            rollback_window_minutes=r.int("MLOPS_ROLLBACK_WINDOW_MINUTES", d.rollback_window_minutes, lo=0),
            cooldown_minutes=r.int("MLOPS_COOLDOWN_MINUTES", d.cooldown_minutes, lo=0),
            max_attempts=r.int("MLOPS_MAX_ATTEMPTS", d.max_attempts, lo=1),
            drift_psi_threshold=r.float("MLOPS_DRIFT_PSI_THRESHOLD", d.drift_psi_threshold, lo=0.0),
            freeze=r.bool("MLOPS_FREEZE", d.freeze),
            rollout_steps=r.parse("MLOPS_ROLLOUT_STEPS", d.rollout_steps, _steps,
                                  r.str("MLOPS_ROLLOUT_STEPS", ",".join(map(str, d.rollout_steps)))),
            bake_minutes=r.int("MLOPS_BAKE_MINUTES", d.bake_minutes, lo=0, hi=10080),
            analysis_min_requests=r.int("MLOPS_ANALYSIS_MIN_REQUESTS", d.analysis_min_requests, lo=1),
            analysis_error_tolerance=_bounded(r, "MLOPS_ANALYSIS_ERROR_TOLERANCE", d.analysis_error_tolerance, 0, 1),
            analysis_latency_tolerance=_bounded(r, "MLOPS_ANALYSIS_LATENCY_TOLERANCE", d.analysis_latency_tolerance,
                                                0, 100),
            analysis_latency_floor_ms=_bounded(r, "MLOPS_ANALYSIS_LATENCY_FLOOR_MS", d.analysis_latency_floor_ms, 0,
                                               60000),
            analysis_max_wait_minutes=r.int("MLOPS_ANALYSIS_MAX_WAIT_MINUTES", d.analysis_max_wait_minutes, lo=1),
            analysis_failure_limit=r.int("MLOPS_ANALYSIS_FAILURE_LIMIT", d.analysis_failure_limit, lo=1),
            retention_minutes=r.int("MLOPS_RETENTION_MINUTES", d.retention_minutes, lo=0),
            retain_known_good=r.int("MLOPS_RETAIN_KNOWN_GOOD", d.retain_known_good, lo=0, hi=10),
            **r.parse("MLOPS_APPROVAL", {"approval": d.approval, "approval_endpoints": ()}, _approval,
                      r.str("MLOPS_APPROVAL", d.approval)),
            approval_ttl_hours=r.int("MLOPS_APPROVAL_TTL_HOURS", d.approval_ttl_hours, lo=1, hi=24 * 90),
            retrain_budget=r.int("MLOPS_RETRAIN_BUDGET", d.retrain_budget, lo=0),
        )
        s = cls()
        cloud = r.str("MLOPS_AZURE_CLOUD", s.azure_cloud)
        if cloud not in AZURE_CLOUDS:
            r.fail("MLOPS_AZURE_CLOUD", f"MLOPS_AZURE_CLOUD must be one of {', '.join(AZURE_CLOUDS)}, not {cloud!r}")
        settings = cls(
            backend=backend,
            home=Path(r.str("MLOPS_HOME", str(s.home))),
            subscription_id=r.str("MLOPS_SUBSCRIPTION_ID", ""),
            resource_group=r.str("MLOPS_RESOURCE_GROUP", ""),
            workspace=workspace,
            azure_cloud=cloud,
            compute=r.str("MLOPS_COMPUTE", s.compute),
            low_priority=r.bool("MLOPS_LOW_PRIORITY", s.low_priority),
            max_run_seconds=r.int("MLOPS_MAX_RUN_SECONDS", s.max_run_seconds, lo=60),
            environment=r.str("MLOPS_ENVIRONMENT", s.environment),
            datastore=r.str("MLOPS_DATASTORE", s.datastore),
            landing_container=r.str("MLOPS_LANDING_CONTAINER", s.landing_container),
            datastore_account=r.str("MLOPS_DATASTORE_ACCOUNT", ""),
            model_name=r.str("MLOPS_MODEL_NAME", s.model_name),
            endpoint_name=r.str("MLOPS_ENDPOINT_NAME", s.endpoint_name),
            instance_type=r.str("MLOPS_INSTANCE_TYPE", s.instance_type),
            code_version=r.str("MLOPS_CODE_VERSION", ""),
            ledger_table_uri=r.str("MLOPS_LEDGER__tableServiceUri", ""),
            topic_endpoint=r.str("MLOPS_EVENTS__topicEndpointUri", ""),
            log_analytics_workspace_id=r.str("MLOPS_LOG_ANALYTICS_WORKSPACE_ID", ""),
            logs_endpoint=r.str("MLOPS_LOGS_ENDPOINT", s.logs_endpoint),
            metrics_endpoint=r.str("MLOPS_METRICS_ENDPOINT", ""),
            studio_url=r.str("MLOPS_STUDIO_URL", s.studio_url),
            status_url=r.str("MLOPS_STATUS_URL", ""),
            teams_webhook_url=r.str("MLOPS_TEAMS_WEBHOOK_URL", ""),
            teams_routes=r.str("MLOPS_TEAMS_ROUTES", ""),
            teams_failures_only=r.bool("MLOPS_TEAMS_FAILURES_ONLY", False),
            approvers=tuple(a.strip() for a in r.str("MLOPS_APPROVERS", "").split(",") if a.strip()),
            approval_auth=_choice(r, "MLOPS_APPROVAL_AUTH", "none", ("none", "entra", "easyauth")),
            entra_tenant_id=r.str("MLOPS_ENTRA_TENANT_ID", ""),
            entra_audience=r.str("MLOPS_ENTRA_AUDIENCE", ""),
            entra_jwks_url=r.str("MLOPS_ENTRA_JWKS_URL", ""),
            alert_auth=_choice(r, "MLOPS_ALERT_AUTH", "key", ("key", "entra")),
            alert_audience=r.str("MLOPS_ALERT_AUDIENCE", ""),
            alert_role=r.str("MLOPS_ALERT_ROLE", ""),
            public_url=r.str("MLOPS_PUBLIC_URL", "").rstrip("/"),
            contract=_contract(r),
            policy=policy,
            drift=_drift(r),
        )
        if r.problems:
            raise SettingsError(r.problems, settings)
        return settings

    def with_policy(self, **changes: object) -> Settings:
        """A copy with some policy knobs changed (tests, the demo)."""
        return dataclasses.replace(self, policy=dataclasses.replace(self.policy, **changes))

    def model_for(self, asset: str) -> str:
        return _name(self.model_name, asset)

    def endpoint_for(self, asset: str) -> str:
        return _name(self.endpoint_name, asset)


# Every setting from_env reads; infra tests check the Function App sets exactly these.
SETTING_NAMES: tuple[str, ...] = (
    "MLOPS_BACKEND", "MLOPS_HOME", "MLOPS_SUBSCRIPTION_ID", "MLOPS_RESOURCE_GROUP", "MLOPS_WORKSPACE",
    "MLOPS_AZURE_CLOUD",
    "MLOPS_COMPUTE", "MLOPS_LOW_PRIORITY", "MLOPS_MAX_RUN_SECONDS", "MLOPS_ENVIRONMENT", "MLOPS_DATASTORE",
    "MLOPS_LANDING_CONTAINER", "MLOPS_DATASTORE_ACCOUNT", "MLOPS_MODEL_NAME", "MLOPS_ENDPOINT_NAME", "MLOPS_INSTANCE_TYPE",
    "MLOPS_CODE_VERSION", "MLOPS_LEDGER__tableServiceUri", "MLOPS_EVENTS__topicEndpointUri",
    "MLOPS_LOG_ANALYTICS_WORKSPACE_ID", "MLOPS_LOGS_ENDPOINT", "MLOPS_METRICS_ENDPOINT", "MLOPS_STUDIO_URL",
    "MLOPS_STATUS_URL", "MLOPS_TEAMS_WEBHOOK_URL", "MLOPS_TEAMS_ROUTES", "MLOPS_TEAMS_FAILURES_ONLY",
    "MLOPS_PRIMARY_METRIC", "MLOPS_MIN_PRIMARY", "MLOPS_MIN_IMPROVEMENT", "MLOPS_GUARD_METRICS",
    "MLOPS_GUARD_TOLERANCE", "MLOPS_ROLLBACK_WINDOW_MINUTES", "MLOPS_COOLDOWN_MINUTES",
    "MLOPS_MAX_ATTEMPTS", "MLOPS_DRIFT_PSI_THRESHOLD", "MLOPS_FREEZE",
    "MLOPS_ROLLOUT_STEPS", "MLOPS_BAKE_MINUTES", "MLOPS_ANALYSIS_MIN_REQUESTS", "MLOPS_ANALYSIS_ERROR_TOLERANCE",
    "MLOPS_ANALYSIS_LATENCY_TOLERANCE", "MLOPS_ANALYSIS_LATENCY_FLOOR_MS", "MLOPS_ANALYSIS_MAX_WAIT_MINUTES", "MLOPS_ANALYSIS_FAILURE_LIMIT",
    "MLOPS_RETENTION_MINUTES", "MLOPS_RETAIN_KNOWN_GOOD", "MLOPS_APPROVAL", "MLOPS_APPROVAL_TTL_HOURS",
    "MLOPS_RETRAIN_BUDGET", "MLOPS_APPROVERS", "MLOPS_APPROVAL_AUTH", "MLOPS_ENTRA_TENANT_ID",
    "MLOPS_ENTRA_AUDIENCE", "MLOPS_ENTRA_JWKS_URL", "MLOPS_PUBLIC_URL", "MLOPS_ALERT_AUTH", "MLOPS_ALERT_AUDIENCE",
    "MLOPS_ALERT_ROLE",
    "MLOPS_DRIFT_INTERVAL_MINUTES", "MLOPS_DRIFT_CONTAINER_URL", "MLOPS_DRIFT_MIN_ROWS", "MLOPS_DRIFT_KS_THRESHOLD",
    "MLOPS_DRIFT_WASSERSTEIN_THRESHOLD", "MLOPS_DRIFT_JS_THRESHOLD", "MLOPS_DRIFT_CHI2_P", "MLOPS_DRIFT_MAX_ROWS",
    "MLOPS_DRIFT_OFFLOAD_MB",
    "MLOPS_DEGRADATION_TOLERANCE",
    "MLOPS_LABEL_COLUMN", "MLOPS_ID_COLUMNS", "MLOPS_FEATURE_COLUMNS", "MLOPS_MIN_ROWS",
)


def _drift(r: _Reader) -> DriftSettings:
    d = DriftSettings()
    interval = r.int("MLOPS_DRIFT_INTERVAL_MINUTES", d.interval_minutes, lo=10, hi=1440)
    if 1440 % interval:
        r.fail("MLOPS_DRIFT_INTERVAL_MINUTES", f"MLOPS_DRIFT_INTERVAL_MINUTES must divide a day (10, 15, 20, 30, 60, "
                                               f"..., 1440), not {interval}")
        interval = d.interval_minutes
    url = r.str("MLOPS_DRIFT_CONTAINER_URL", "").rstrip("/")
    if url and (not url.startswith("https://") or "?" in url or url.count("/") < 3):
        r.fail("MLOPS_DRIFT_CONTAINER_URL", "MLOPS_DRIFT_CONTAINER_URL must be the https URL of a blob container, "
                                            "without a query string (the app reads with its identity)")
        url = ""
    return DriftSettings(
        interval_minutes=interval, container_url=url,
        min_rows=r.int("MLOPS_DRIFT_MIN_ROWS", d.min_rows, lo=1),
        ks_threshold=_bounded(r, "MLOPS_DRIFT_KS_THRESHOLD", d.ks_threshold, 0, 1),
        wasserstein_threshold=r.float("MLOPS_DRIFT_WASSERSTEIN_THRESHOLD", d.wasserstein_threshold, lo=0.0),
        js_threshold=_bounded(r, "MLOPS_DRIFT_JS_THRESHOLD", d.js_threshold, 0, 1),
        chi2_p=_bounded(r, "MLOPS_DRIFT_CHI2_P", d.chi2_p, 0, 1),
        max_rows=r.int("MLOPS_DRIFT_MAX_ROWS", d.max_rows, lo=1000),
        offload_mb=r.int("MLOPS_DRIFT_OFFLOAD_MB", d.offload_mb, lo=1),
        degradation_tolerance=_bounded(r, "MLOPS_DEGRADATION_TOLERANCE", d.degradation_tolerance, 0, 1),
    )


def _steps(raw: str) -> tuple[int, ...]:
    """MLOPS_ROLLOUT_STEPS: rising whole percents, the last one 100 (e.g. "10,50,100")."""
    try:
        steps = tuple(int(p) for p in raw.split(",") if p.strip())
    except ValueError:
        raise InvalidPayload(f"MLOPS_ROLLOUT_STEPS must be whole percents like 10,50,100, not {raw!r}",
                             field="MLOPS_ROLLOUT_STEPS") from None
    if not steps or steps[-1] != 100 or any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
        raise InvalidPayload(f"MLOPS_ROLLOUT_STEPS must rise from above 0 to exactly 100, not {raw!r}",
                             field="MLOPS_ROLLOUT_STEPS")
    return steps


def _choice(r: _Reader, name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = r.str(name, default).lower()
    if value not in allowed:
        r.fail(name, f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        return default
    return value


def _bounded(r: _Reader, name: str, default: float, lo: float, hi: float) -> float:
    value = r.float(name, default)
    if not lo <= value <= hi:  # also refuses NaN, which compares False with everything
        r.fail(name, f"{name} must be a number from {lo} to {hi}, not {value}")
        return default
    return value


def _metric(r: _Reader, name: str, default: str) -> str:
    """The gate's metric, any case ("AUC" is auc); one train.py logs and where higher is better."""
    value = r.str(name, default).lower()
    if value in HIGHER_IS_BETTER:
        return value
    hint = " (lower is better: name it in MLOPS_GUARD_METRICS instead)" if value in LOWER_IS_BETTER else ""
    r.fail(name, f"{name} must be a metric training logs where higher is better ({', '.join(HIGHER_IS_BETTER)}), "
                 f"not {value!r}{hint}")
    return default


def _columns(raw: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(c.strip() for c in raw.split(",") if c.strip()))


def _contract(r: _Reader) -> Contract:
    d = Contract()
    label = r.str("MLOPS_LABEL_COLUMN", d.label)
    raw_ids = r.str("MLOPS_ID_COLUMNS", ",".join(d.id_columns))
    ids = () if raw_ids == "-" else _columns(raw_ids)  # "-": the table has no id columns
    features = _columns(r.str("MLOPS_FEATURE_COLUMNS", ""))
    if label in ids:
        r.fail("MLOPS_ID_COLUMNS", f"MLOPS_ID_COLUMNS names the label column {label!r}: an id column is ignored")
    if label in features or set(features) & set(ids):
        r.fail("MLOPS_FEATURE_COLUMNS", "MLOPS_FEATURE_COLUMNS must not name the label or an id column, not "
                                        f"{', '.join(sorted(set(features) & ({label} | set(ids))))}")
    return Contract(label=label, id_columns=ids, features=features,
                    min_rows=r.int("MLOPS_MIN_ROWS", d.min_rows, lo=2))


# Settings the azure backend cannot start without: (name, Settings attribute, what it is).
AZURE_REQUIRED = (
    ("MLOPS_SUBSCRIPTION_ID", "subscription_id", "the Azure ML workspace's subscription id"),
    ("MLOPS_RESOURCE_GROUP", "resource_group", "the Azure ML workspace's resource group"),
    ("MLOPS_WORKSPACE", "workspace", "the Azure ML workspace name"),
    ("MLOPS_LEDGER__tableServiceUri", "ledger_table_uri",
     "the ledger's Table endpoint, e.g. https://<account>.table.core.windows.net"),
)


def requirements(settings: Settings) -> list[Problem]:
    """What the chosen backend and auth modes need beyond single values: missing settings (errors) and features
    left off (warnings), all at once."""
    out: list[Problem] = []
    if settings.backend == "azure":
        for name, attr, what in AZURE_REQUIRED:
            if not getattr(settings, attr):
                out.append(Problem(name, f"{name} is not set: the azure backend needs {what}"))
        if not settings.topic_endpoint:
            out.append(Problem("MLOPS_EVENTS__topicEndpointUri", "MLOPS_EVENTS__topicEndpointUri is not set: "
                               "rollbacks and drift findings are not published", "warning"))
        if not (settings.log_analytics_workspace_id or settings.metrics_endpoint):
            out.append(Problem("MLOPS_LOG_ANALYTICS_WORKSPACE_ID", "neither MLOPS_LOG_ANALYTICS_WORKSPACE_ID nor "
                               "MLOPS_METRICS_ENDPOINT is set: canary analysis and drift decisions have no health "
                               "reading", "warning"))
    if settings.approval_auth == "entra":
        for name, value in (("MLOPS_ENTRA_TENANT_ID", settings.entra_tenant_id),
                            ("MLOPS_ENTRA_AUDIENCE", settings.entra_audience)):
            if not value:
                out.append(Problem(name, f"{name} is not set: MLOPS_APPROVAL_AUTH=entra checks tokens against it"))
    if settings.alert_auth == "entra":
        for name, value in (("MLOPS_ALERT_AUDIENCE", settings.alert_audience), ("MLOPS_ALERT_ROLE", settings.alert_role)):
            if not value:
                out.append(Problem(name, f"{name} is not set: MLOPS_ALERT_AUTH=entra checks alert tokens against it"))
    if (settings.policy.approval == "manual" or any(m == "manual" for _, m in settings.policy.approval_endpoints)) \
            and not settings.approvers:
        out.append(Problem("MLOPS_APPROVERS", "MLOPS_APPROVERS is empty but MLOPS_APPROVAL asks for manual "
                           "approval: nobody can approve", "warning"))
    return out + _shapes(settings)


def _shapes(settings: Settings) -> list[Problem]:
    """Values read in a shape of their own by the adapters that use them, checked here with those adapters' own
    rules, so that they are reported with every other problem instead of one at a time when a client is made."""
    from shared.adapters.monitor import _GUID, metrics_audience
    from shared.notify import RoutingTable

    out: list[Problem] = []
    if settings.log_analytics_workspace_id and not _GUID.fullmatch(settings.log_analytics_workspace_id):
        out.append(Problem("MLOPS_LOG_ANALYTICS_WORKSPACE_ID", "MLOPS_LOG_ANALYTICS_WORKSPACE_ID must be the "
                           "workspace's GUID (Workspace ID on its Overview blade)"))
    if settings.topic_endpoint and not settings.topic_endpoint.startswith("https://"):
        out.append(Problem("MLOPS_EVENTS__topicEndpointUri", "MLOPS_EVENTS__topicEndpointUri must be the custom "
                           "topic's https endpoint"))
    parsers = []
    if settings.metrics_endpoint:
        parsers.append(("MLOPS_METRICS_ENDPOINT", lambda: metrics_audience(settings.metrics_endpoint)))
    if settings.teams_routes:
        parsers.append(("MLOPS_TEAMS_ROUTES", lambda: RoutingTable.parse(
            settings.teams_routes, default_url=settings.teams_webhook_url, failures_only=settings.teams_failures_only)))
    for name, parse in parsers:
        try:
            parse()
        except InvalidPayload as error:
            out.append(Problem(error.field or name, str(error)))
    return out


def check(environ: Mapping[str, str] | None = None) -> list[Problem]:
    """Every problem with the settings in ``environ`` (default: the process environment) at once: invalid values,
    then what the backend needs. Errors first; an empty list means the app can start."""
    env = os.environ if environ is None else environ
    try:
        settings, problems = Settings.from_env(env), []
    except SettingsError as error:
        settings, problems = error.settings, list(error.problems)
    named = {p.setting for p in problems}
    if settings is not None:
        problems += [p for p in requirements(settings) if p.setting not in named]
    known = set(SETTING_NAMES)
    problems += [Problem(name, f"{name} is not a setting (a typo?); it is ignored", "warning")
                 for name in sorted(env) if name.startswith("MLOPS_") and name not in known]
    return sorted(problems, key=lambda p: p.severity != "error")


def check_config(environ: Mapping[str, str] | None = None) -> list[Problem]:
    """Alias of ``check`` (the CLI's check-config command)."""
    return check(environ)


def _approval(raw: str) -> dict[str, object]:
    """MLOPS_APPROVAL: "auto", "manual", or per-endpoint overrides after a default: "auto;churn-endpoint=manual"."""
    default, overrides = "auto", []
    for part in (p.strip() for p in raw.replace(",", ";").split(";")):
        if not part:
            continue
        name, eq, mode = part.partition("=")
        mode = (mode if eq else name).strip().lower()
        if mode not in ("auto", "manual"):
            raise InvalidPayload(f"MLOPS_APPROVAL must be auto, manual or endpoint=auto|manual entries, not {raw!r}",
                                 field="MLOPS_APPROVAL")
        if eq:
            overrides.append((name.strip(), mode))
        else:
            default = mode
    return {"approval": default, "approval_endpoints": tuple(overrides)}


def _name(template: str, asset: str) -> str:
    return template.format(asset=asset) if "{asset}" in template else template


class _Reader:
    """Typed access to the environment; every failure names the setting."""

    _TRUE = {"1", "true", "yes", "on"}
    _FALSE = {"0", "false", "no", "off", ""}

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[Problem] = []

    def fail(self, name: str, message: str) -> None:
        """Record a bad setting; reading goes on so that every problem is reported at once."""
        self.problems.append(Problem(name, message))

    def parse(self, name: str, default, fn, *args):
        """``fn(*args)``, or ``default`` with the InvalidPayload it raised recorded against ``name``."""
        try:
            return fn(*args)
        except InvalidPayload as error:
            self.fail(name, str(error))
            return default

    def str(self, name: str, default: str) -> str:
        value = self.env.get(name)
        return default if value is None or value.strip() == "" else value.strip()

    def bool(self, name: str, default: bool) -> bool:
        value = self.env.get(name)
        if value is None:
            return default
        v = value.strip().lower()
        if v in self._TRUE:
            return True
        if v in self._FALSE:
            return False
        self.fail(name, f"{name} must be true or false, not {value!r}")
        return default

    def int(self, name: str, default: int, *, lo: int | None = None, hi: int | None = None) -> int:
        raw = self.str(name, "")
        if raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            self.fail(name, f"{name} must be a whole number, not {raw!r}")
            return default
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.fail(name, _range(name, lo, hi, value))
            return default
        return value

    def float(self, name: str, default: float, *, lo: float | None = None, hi: float | None = None) -> float:
        """A finite number within [lo, hi]: "nan" or "inf" parse as floats, but a NaN threshold makes every
        comparison false (a gate that approves anything, guards that never fire), so they are refused."""
        raw = self.str(name, "")
        if raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            self.fail(name, f"{name} must be a number, not {raw!r}")
            return default
        if not math.isfinite(value):
            self.fail(name, f"{name} must be a finite number, not {raw!r}")
            return default
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.fail(name, _range(name, lo, hi, value))
            return default
        return value


def _range(name: str, lo, hi, value) -> str:
    if hi is None:
        return f"{name} must be at least {lo}, not {value}"
    if lo is None:
        return f"{name} must be at most {hi}, not {value}"
    return f"{name} must be between {lo} and {hi}, not {value}"
