"""A drift check too large for the function, run as a job: ``python -m shared.drift.job``.

The monitor (shared/drift/monitor.py) submits this module as a command job on the training compute when a window's
collected data is over ``MLOPS_DRIFT_OFFLOAD_MB`` (shared/drift/offload.py). It reads the deployment's collected
JSONL from a folder (Azure ML mounts ``modelDataCollector/<endpoint>/<deployment>/`` of workspaceblobstore; the
embedded backend passes the same folder of its datastore) and the model's ``baseline.json``, runs the same reader
and engine as the in-function check, and writes ``statistics.json`` to its output folder. Only numpy is needed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path

logger = logging.getLogger(__name__)

STATISTICS = "statistics.json"


class _Blob:
    def __init__(self, name: str, size: int) -> None:
        self.name, self.size = name, size


class _Download:
    def __init__(self, path: Path, chunk: int) -> None:
        self.path, self.chunk = path, chunk

    def chunks(self):
        with self.path.open("rb") as f:
            while block := f.read(self.chunk):
                yield block

    def readall(self) -> bytes:
        return self.path.read_bytes()


class FolderContainer:
    """The two calls the collector reader makes on a ContainerClient (``list_blobs(name_starts_with)`` with each
    blob's ``name`` and ``size``, ``download_blob(name)`` with ``chunks()``/``readall()``), over a local folder.
    ``prefix`` is the blob name the folder stands for: a mount of ``modelDataCollector/ep/dep/`` is that folder."""

    def __init__(self, folder: Path | str, *, prefix: str = "", chunk: int = 4 * 1024 * 1024) -> None:
        self.folder = Path(folder)
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.chunk = chunk

    def _path(self, name: str) -> Path | None:
        if not name.startswith(self.prefix):
            return None
        parts = [p for p in name[len(self.prefix):].split("/") if p]
        if any(p in (".", "..") for p in parts):
            return None
        return self.folder.joinpath(*parts)

    def list_blobs(self, name_starts_with: str = ""):
        # The folder of the prefix when the prefix is one (the reader lists hour folders), else the whole tree.
        base = self._path(name_starts_with.rsplit("/", 1)[0] + "/") if "/" in name_starts_with else self.folder
        if base is None or not base.is_dir():
            return
        for path in sorted(p for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")):
            name = self.prefix + path.relative_to(self.folder).as_posix()
            if name.startswith(name_starts_with):
                yield _Blob(name, path.stat().st_size)

    def download_blob(self, name: str):
        path = self._path(name)
        if path is None or not path.is_file():
            try:  # what a ContainerClient raises, when azure-core is there (the app; not the numpy-only job)
                from azure.core.exceptions import ResourceNotFoundError
            except ImportError:
                raise FileNotFoundError(name) from None
            raise ResourceNotFoundError(f"blob {name} does not exist")
        return _Download(path, self.chunk)


def statistics(*, collected: Path | str, baseline: Path | str, endpoint: str, deployment: str, start: datetime,
               end: datetime, thresholds: dict, max_rows: int) -> dict:
    """The drift statistics of one window, as the job writes them (and the completion handler reads them)."""
    from shared.drift.collector import ROOT, CollectorReader
    from shared.drift.engine import Thresholds, compare
    from shared.training.baseline_profile import read_profile

    profile = read_profile(json.loads(Path(baseline).read_text()))
    container = FolderContainer(collected, prefix=f"{ROOT}/{endpoint}/{deployment}/")
    window = CollectorReader(container, max_rows=max_rows).window(endpoint, deployment, profile, start, end)
    limits = Thresholds(**thresholds)
    result = compare(profile, window.columns, predictions=window.predictions, thresholds=limits,
                     workers=min(2, os.cpu_count() or 1))
    from shared.drift.chart import histogram
    from shared.drift.engine import PREDICTION

    out = {"status": result.status, "drifted": bool(result.drifted), "rows": window.rows,
           "records": window.records, "blobs": window.blobs, "truncated": window.truncated,
           "skipped_lines": window.skipped_lines,
           "results": {k: f.to_dict(limits) for k, f in result.features.items()}, "top": [], "chart": None}
    if result.drifted:
        top = result.top()
        metric, value, threshold = top[0].signal(limits)
        name = top[0].name
        out.update(metric=metric, value=value, threshold=threshold, top=[f.to_dict(limits) for f in top],
                   chart=histogram(name, profile.get("prediction") if name == PREDICTION else profile["features"][name],
                                   window.predictions if name == PREDICTION else window.columns[name]))
        from shared.local.monitor import describe

        out["description"] = describe(result)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collected", required=True, help="folder of modelDataCollector/<endpoint>/<deployment>/")
    parser.add_argument("--baseline", required=True, help="the model's baseline.json")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--deployment", required=True)
    parser.add_argument("--start", required=True, type=datetime.fromisoformat)
    parser.add_argument("--end", required=True, type=datetime.fromisoformat)
    parser.add_argument("--thresholds", required=True, help="JSON of shared.drift.engine.Thresholds")
    parser.add_argument("--max-rows", type=int, default=2**62)
    parser.add_argument("--output", required=True, help="folder to write statistics.json to")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    stats = statistics(collected=args.collected, baseline=args.baseline, endpoint=args.endpoint,
                       deployment=args.deployment, start=args.start, end=args.end,
                       thresholds=json.loads(args.thresholds), max_rows=args.max_rows)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / f".{STATISTICS}.partial").write_text(json.dumps(stats))
    (out / f".{STATISTICS}.partial").replace(out / STATISTICS)
    logger.info("drift job: %s over %d rows of %s/%s", stats["status"], stats["rows"], args.endpoint, args.deployment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
