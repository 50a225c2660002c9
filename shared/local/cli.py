"""Command line for the local stack: serve the app with its Event Grid, post captured events, replay dead letters."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import InvalidPayload
from shared.local import subscriptions as subs

logger = logging.getLogger(__name__)

DEFAULT_PORT = 7071
# `serve` writes where it listens and its key here (under MLOPS_HOME), so the other commands need no flags.
RUNTIME_FILE = "local-host.json"


def main(argv: list[str] | None = None, *, configure_logging: bool = True) -> int:
    """``configure_logging=False`` when another command line (``mlops``) runs a command and owns the logging."""
    parser = _parser()
    args = parser.parse_args(argv)
    from shared import logs

    if configure_logging:
        # JSON lines with the invocation, event and chain ids (docs/observability.md)
        # serve tells its story in its log; the one-shot commands print what they did and log only problems
        logs.setup_local(logging.DEBUG if args.verbose else logging.INFO if args.command == "serve" else logging.WARNING)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the story
    try:
        return args.run(args)
    except (subs.SubscriptionError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except InvalidPayload as error:  # settings (every problem at once), a refused file
        print(f"error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared.local", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the Function App and a local Event Grid until Ctrl-C")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0 picks a free one")
    serve.add_argument("--key", help="the function key to require (default: a new random one, printed)")
    serve.add_argument("--easy-auth", action="store_true",
                       help="simulate App Service Authentication: X-Local-User (and X-Local-Groups, X-Local-Roles) "
                            "become the X-MS-CLIENT-PRINCIPAL headers; sets MLOPS_APPROVAL_AUTH=easyauth")
    serve.add_argument("--tick-every", type=float, default=60.0,
                       help="seconds between rollout controller ticks (default 60, like the timer; 0 = off)")
    serve.add_argument("--drift-every", type=float, default=60.0,
                       help="seconds between PSI drift checks of every endpoint's logged requests (0 = off; "
                            "default 60); a drifted endpoint raises MLOps.DriftDetected")
    _grid_options(serve, max_attempts=None)
    serve.set_defaults(run=serve_command)

    post = commands.add_parser("post-event", help="publish a saved Event Grid payload (one event or an array) "
                                                  "through the subscription list to a running host")
    post.add_argument("file", type=Path)
    post.add_argument("--source", choices=subs.SOURCES, help="default: read from each event's topic")
    _target_options(post)
    _grid_options(post, max_attempts=5)
    post.set_defaults(run=post_event_command)

    land = commands.add_parser("land", help="upload a file into the local datastore's landing container, as data "
                                            "arrives in Azure, and deliver the BlobCreated event to a running host")
    land.add_argument("asset", help="data asset name, e.g. churn")
    land.add_argument("version", help="data asset version, e.g. 1 or 2026-12-01")
    land.add_argument("file", type=Path, nargs="?",
                      help="the file to land (default: a synthetic churn table generated with the options below)")
    land.add_argument("--rows", type=int, default=3000, help="generated rows (default 3000)")
    land.add_argument("--seed", type=int, default=None, help="generator seed (default: from the version)")
    land.add_argument("--drift", type=float, default=0.0, help="feature drift of the generated table, 0..1")
    land.add_argument("--label-noise", type=float, default=0.0, help="share of flipped labels, 0..1")
    _target_options(land)
    _grid_options(land, max_attempts=5)
    land.set_defaults(run=land_command)

    check = commands.add_parser("check-config", help="check every MLOPS_* setting at once; exit 2 on any error")
    check.set_defaults(run=check_config_command)

    replay = commands.add_parser("replay", help="deliver dead-lettered events again; delivered files are removed")
    replay.add_argument("--subscription", help="only this subscription's dead letters")
    _target_options(replay)
    _grid_options(replay, max_attempts=1, delivery=False)
    replay.set_defaults(run=replay_command)
    return parser


def _target_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="the running host (default: what `serve` recorded, else http://127.0.0.1:7071)")
    p.add_argument("--key", help="its function key (default: what `serve` recorded)")


def _grid_options(p: argparse.ArgumentParser, *, max_attempts: int | None, delivery: bool = True) -> None:
    p.add_argument("--subscriptions", type=Path, default=None, help="default: infra/subscriptions.json")
    p.add_argument("--dead-letter-dir", type=Path, default=None, help="default: $MLOPS_HOME/deadletter")
    if not delivery:  # replay delivers each dead letter once: retry and duplicate knobs would be ignored
        return
    p.add_argument("--max-attempts", type=int, default=max_attempts,
                   help="delivery attempts per event (default: the subscription's retry policy)"
                   if max_attempts is None else f"delivery attempts per event (default {max_attempts})")
    p.add_argument("--backoff", type=float, default=0.05, help="first retry delay in seconds, doubling (default 0.05)")
    p.add_argument("--duplicate-every", type=int, default=0, help="send every Nth event twice (default 0 = never)")


def _settings():
    from shared.config import Settings

    return Settings.from_env()


def _grid(args: argparse.Namespace, url: str, key: str, home: Path):
    from shared.local.eventgrid import LocalEventGrid

    return LocalEventGrid(subs.load(args.subscriptions), endpoint_url=url, function_key=key,
                          dead_letter_dir=args.dead_letter_dir or home / "deadletter",
                          max_attempts=getattr(args, "max_attempts", 1), backoff=getattr(args, "backoff", 0.05),
                          duplicate_every=getattr(args, "duplicate_every", 0))


def _target(args: argparse.Namespace, home: Path) -> tuple[str, str]:
    recorded: dict[str, Any] = {}
    path = home / RUNTIME_FILE
    if path.exists():
        recorded = json.loads(path.read_text(encoding="utf-8"))
    url = args.url or recorded.get("url") or f"http://127.0.0.1:{DEFAULT_PORT}"
    key = args.key or recorded.get("key")
    if not key:
        raise ValueError(f"no function key: pass --key, or start `python -m shared.local serve` (it records it in {path})")
    return url, key


# --- serve ---------------------------------------------------------------------------------------------------

@dataclass
class Stack:
    """The app served locally: the host, the Event Grid delivering to it, and the runtime the functions use."""

    host: Any
    grid: Any
    runtime: Any

    def close(self) -> None:
        import function_app

        self.grid.drain(timeout=10)  # let deliveries in flight finish before the host goes away
        self.grid.close()
        self.host.stop()
        self.runtime.close()
        function_app.use_runtime(None)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def local_stack(settings=None, *, host: str = "127.0.0.1", port: int = 0, key: str | None = None,
                subscriptions: list[subs.Subscription] | None = None, dead_letter_dir: Path | None = None,
                max_attempts: int | None = None, backoff: float = 0.05, duplicate_every: int = 0,
                easy_auth: bool = False, **overrides: Any) -> Stack:
    """Start ``function_app`` on a LocalHost with a LocalEventGrid as the workspace's ``emit``; ``overrides``
    go to ``shared.bootstrap.build`` (tests replace ports there)."""
    import function_app
    from shared.bootstrap import build
    from shared.local.eventgrid import LocalEventGrid
    from shared.local.host import LocalHost, new_key

    settings = settings or _settings()
    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    if easy_auth:
        import dataclasses

        settings = dataclasses.replace(settings, approval_auth="easyauth")
    server = LocalHost(function_app.app, host=host, port=port, master_key=key or new_key(), easy_auth=easy_auth)
    # The grid needs the host's URL and the runtime needs the grid (emit); the host reads the runtime on each
    # request, so everything is wired before start() lets the first request in.
    grid = LocalEventGrid(subscriptions if subscriptions is not None else subs.load(),
                          endpoint_url=f"http://{host}:{port}", function_key=server.key,
                          dead_letter_dir=dead_letter_dir or home / "deadletter", max_attempts=max_attempts,
                          backoff=backoff, duplicate_every=duplicate_every)
    try:
        runtime = build(settings, emit=grid.publish, **overrides)
    except BaseException:
        grid.close()
        raise
    # Nothing of this home runs yet: claims still held belong to a host that crashed (kill -9); released now, they
    # do not answer Busy to every redelivery until their lease runs out.
    release = getattr(runtime.ledger, "release_abandoned", None)
    if callable(release):
        release()
    function_app.use_runtime(runtime)
    server.start()
    grid.endpoint_url = server.url  # the real port when port=0
    return Stack(host=server, grid=grid, runtime=runtime)


def serve_command(args: argparse.Namespace) -> int:
    settings = _settings()
    if settings.backend != "local":
        raise ValueError("serve runs the local backend: unset MLOPS_WORKSPACE or set MLOPS_BACKEND=local")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be from 0 to 65535, not {args.port}")
    try:
        if args.port:
            _check_port(args.host, args.port)  # before anything is built or logged: a busy port is one line
        stack = local_stack(settings, host=args.host, port=args.port, key=args.key,
                            subscriptions=subs.load(args.subscriptions), dead_letter_dir=args.dead_letter_dir,
                            max_attempts=args.max_attempts, backoff=args.backoff,
                            duplicate_every=args.duplicate_every, easy_auth=args.easy_auth)
    except ImportError as error:  # a part of the embedded backend is missing from this checkout
        print(f"error: cannot build the local backend: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the port is taken (EADDRINUSE) or not ours to bind
        print(f"error: cannot listen on {args.host}:{args.port} ({error.strerror or error}): stop what uses it, "
              f"or pick another port: make serve PORT={args.port + 1 if args.port else 7072}", file=sys.stderr)
        return 2
    runtime_file = settings.home / RUNTIME_FILE
    runtime_file.write_text(json.dumps({"url": stack.host.url, "key": stack.host.key}), encoding="utf-8")
    os.chmod(runtime_file, 0o600)
    _banner(stack.host, stack.grid, settings.home)
    # `kill` (SIGTERM) stops as cleanly as Ctrl-C: deliveries finish and the recorded URL and key are removed.
    signal.signal(signal.SIGTERM, _interrupt)
    next_check = time.monotonic() + args.drift_every
    next_tick = time.monotonic() + args.tick_every
    try:
        while True:
            time.sleep(1)
            if args.tick_every > 0 and time.monotonic() >= next_tick:
                tick(stack.runtime)
                next_tick = time.monotonic() + args.tick_every
            if args.drift_every > 0 and time.monotonic() >= next_check:
                check_drift(stack.runtime)
                next_check = time.monotonic() + args.drift_every
    except KeyboardInterrupt:
        print("\nstopping: finishing deliveries in flight ...")
    finally:
        stack.close()
        runtime_file.unlink(missing_ok=True)
    print(f"stats: {json.dumps(stack.grid.stats())}")
    return 0


def _check_port(host: str, port: int) -> None:
    """Raise OSError if ``host:port`` cannot be listened on (bound as the host's server binds, SO_REUSEADDR)."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def tick(runtime) -> object:
    """One rollout controller tick, as the every-minute timer trigger runs it in Azure."""
    import uuid

    from shared import retry
    from shared.messages import AdvanceRollouts

    with retry.deadline(retry.ROLLOUT_TICK_SECONDS):  # the timer's own deadline, as function_app sets it
        return runtime.bus.handle(AdvanceRollouts(event_id=f"tick-{uuid.uuid4()}"))


def check_drift(runtime) -> list:
    """One pass of the local model monitor over every endpoint: PSI of the logged inputs against the serving
    model's training baseline. A drifted endpoint emits MLOps.DriftDetected through the local Event Grid, and
    the drift policy decides (cooldowns and the notifier's dedupe keep a persisting drift from repeating)."""
    reports = []
    threshold = runtime.settings.policy.drift_psi_threshold
    for endpoint in runtime.workspace.list_endpoints():
        try:
            reports.append(runtime.monitor.check_drift(endpoint.name, threshold=threshold))
        except Exception:  # a monitor bug must not stop the served app; it is logged with its traceback
            logger.exception("drift check of %s failed", endpoint.name)
    return reports


def _banner(host, grid, home: Path) -> None:
    http = sorted((f for f in host.functions.values() if f.trigger_type == "httpTrigger"), key=lambda f: f.route)
    lines = [
        "",
        f"Functions host   {host.url}",
        f"Function key     {host.key}",
        f"MLOPS_HOME       {home.resolve()}",
        f"Dead letters     {grid.dead_letter_dir.resolve()}",
        "",
        "HTTP functions:",
        *[f"  {','.join(f.methods) or 'ANY':6} {host.url}/{host.route_prefix}/{f.route}   ({f.name}, {f.auth_level})"
          for f in http],
        "Event Grid subscriptions:",
        *[f"  {s.name:16} -> {s.function:17} {s.source:7} {', '.join(t.rsplit('.', 1)[-1] for t in s.included_event_types) or 'all'}"
          for s in grid.subscriptions],
        "",
        "Try:",
        f"  curl -s -H 'x-functions-key: {host.key}' {host.url}/api/status",
        f"  curl -s -X POST -H 'x-functions-key: {host.key}' -H 'Content-Type: application/json' \\",
        f"       -d '{{\"asset\": \"churn\", \"version\": \"1\", \"reason\": \"try it\"}}' {host.url}/api/reruns",
        "  python -m shared.local land churn 1            # a generated churn table lands → training → deployment",
        "  python -m shared.local post-event tests/fixtures/events/ml_model_registered.json",
        "  python -m shared.local replay",
        "",
        "Ctrl-C stops.",
    ]
    print("\n".join(lines), flush=True)


# --- post-event and replay -----------------------------------------------------------------------------------

def post_event_command(args: argparse.Namespace) -> int:
    home = _settings().home
    url, key = _target(args, home)
    payload = json.loads(args.file.read_text(encoding="utf-8"))
    events = payload if isinstance(payload, list) else [payload]
    grid = _grid(args, url, key, home)
    try:
        for event in events:
            names = grid.publish(event, args.source)
            print(f"{event.get('id')}  {event.get('eventType')}  -> {', '.join(names) or '(no subscription)'}")
        grid.drain(timeout=max(30.0, 5.0 * len(events)))
    finally:
        grid.close()
    stats = grid.stats()
    print(f"delivered {stats['delivered']}, retried {stats['retried']}, dead-lettered {stats['dead_lettered']}"
          + (f" (see {grid.dead_letter_dir})" if stats["dead_lettered"] else ""))
    return 1 if stats["dead_lettered"] or stats["pending"] else 0


def land_command(args: argparse.Namespace) -> int:
    """What an upload to the landing container does in Azure: the blob is committed, then BlobCreated fires. The
    file is checked against the data contract first (nothing is uploaded if it breaks it), and the app's decision
    on the event is read back: exit 0 only if the data version was registered (or already was)."""
    import hashlib
    import tempfile

    from shared import datacontract
    from shared.local import churn
    from shared.local.workspace import WORKSPACE_DIR, upload

    settings = _settings()
    url, key = _target(args, settings.home)
    with tempfile.TemporaryDirectory() as scratch:
        source = args.file
        if source is None:
            seed = args.seed if args.seed is not None else int(hashlib.sha256(args.version.encode()).hexdigest()[:6], 16)
            source = churn.write_csv(Path(scratch) / "customers.csv", rows=args.rows, seed=seed, drift=args.drift,
                                     label_noise=args.label_noise)
        elif not source.is_file():
            raise FileNotFoundError(f"no such file: {source}")
        try:
            report = datacontract.validate(datacontract.read_file(source), settings.contract, asset=args.asset,
                                           version=args.version,
                                           taken=_registered_versions(settings.home / WORKSPACE_DIR, args.asset))
        except datacontract.ContractViolation as error:
            print(f"refused: {error}", file=sys.stderr)
            return 1
        blob = f"{args.asset}/{args.version}/{source.name}"
        event = upload(settings.home / WORKSPACE_DIR, settings.landing_container, blob, source)
    grid = _grid(args, url, key, settings.home)
    try:
        names = grid.publish(event, "storage")
        grid.drain(timeout=60)
    finally:
        grid.close()
    stats = grid.stats()
    print(f"landed {settings.landing_container}/{blob} -> {', '.join(names) or '(no subscription)'}; "
          f"delivered {stats['delivered']}, dead-lettered {stats['dead_lettered']}")
    if stats["dead_lettered"] or stats["pending"]:
        return 1
    verdict = _verdict(url, key, event["id"])
    if verdict is not None and verdict["decision"] in ("rejected", "failed"):
        print(f"{verdict['decision']}: {verdict['reason']}", file=sys.stderr)
        return 1
    print(f"checked {report.rows}{'+' if report.truncated else ''} rows, {len(report.features)} features"
          + (f" (ignored id columns: {', '.join(report.ignored)})" if report.ignored else ""))
    print(f"watch it: curl -s -H 'x-functions-key: <key>' {url}/api/status")
    return 0


def _registered_versions(root: Path, asset: str) -> list[str]:
    """The data versions of ``asset`` the local workspace has registered (read-only; none if it has no database)."""
    import sqlite3

    db = root / "workspace.db"
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        return [row[0] for row in conn.execute("SELECT version FROM data_assets WHERE name = ?", (asset,))]


def _verdict(url: str, key: str, event_id: str) -> dict | None:
    """The app's first recorded decision on ``event_id`` (from GET /api/status), or None if none is listed."""
    import httpx

    try:
        r = httpx.get(f"{url}/api/status", headers={"x-functions-key": key}, timeout=30)
        r.raise_for_status()
    except httpx.HTTPError as error:
        logger.warning("could not read the decision on %s: %s", event_id, error)
        return None
    mine = [d for d in r.json().get("recent_decisions", []) if d.get("event_id") == event_id]
    bad = [d for d in mine if d.get("decision") in ("rejected", "failed")]
    return (bad or mine or [None])[0]


def check_config_command(args: argparse.Namespace) -> int:
    """Every missing or invalid setting at once (shared.config.check); exit 2 if any is an error."""
    from shared.config import check

    problems = check()
    errors = [p for p in problems if p.severity == "error"]
    for p in problems:
        print(f"{p.severity:7} {p.setting}: {p.message}", file=sys.stderr if p.severity == "error" else sys.stdout)
    if errors:
        print(f"{len(errors)} setting(s) must be fixed before the app can start", file=sys.stderr)
        return 2
    print("settings OK" + (f" ({len(problems)} warning(s))" if problems else ""))
    return 0


def replay_command(args: argparse.Namespace) -> int:
    home = _settings().home
    url, key = _target(args, home)
    grid = _grid(args, url, key, home)
    try:
        before = len(grid.dead_letters(args.subscription))
        delivered = grid.replay(args.subscription)
        left = len(grid.dead_letters(args.subscription))
    finally:
        grid.close()
    print(f"replayed {delivered} of {before} dead letters from {grid.dead_letter_dir}; {left} left")
    return 0 if left == 0 else 1
