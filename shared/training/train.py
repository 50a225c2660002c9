"""Train the churn model: xgboost (hist) on a data version, held-out evaluation, metrics, model and drift baseline.

Self-contained (stdlib, numpy, xgboost; mlflow when installed): this folder is the Azure ML command job's code.
Usage: python train.py --data <csv file or folder> --output <dir> [--seed 42] [--test-size 0.25] [--max-rounds 200]
                      [--label churn] [--id-columns customer_id] [--features a,b,c]
The label, id and feature columns are the data contract's settings (MLOPS_LABEL_COLUMN, MLOPS_ID_COLUMNS,
MLOPS_FEATURE_COLUMNS), passed as arguments by the automation: the job itself reads no settings.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path

logger = logging.getLogger("train")

try:  # run as `python train.py` (Azure ML) or as `python -m shared.training.train` (embedded backend)
    from baseline_profile import build_profile
    from score import encode, to_float
except ImportError:  # pragma: no cover - depends on how it is launched
    from shared.training.baseline_profile import build_profile
    from shared.training.score import encode, to_float

TARGET = "churn"  # defaults of the data contract (shared/datacontract.py Contract)
DROP = ("customer_id",)


class DataError(Exception):
    """The data cannot be trained on; the message says why."""


def read_rows(path: Path, label: str = TARGET) -> list[dict]:
    files = sorted(p for p in path.rglob("*.csv") if not p.name.startswith(("_", "."))) if path.is_dir() else [path]
    if not files:
        raise DataError(f"no CSV files under {path}")
    rows: list[dict] = []
    for f in files:
        if not f.exists():
            raise DataError(f"data file {f} does not exist")
        with f.open(newline="", encoding="utf-8") as fh:
            rows.extend(csv.DictReader(fh))
    if not rows:
        raise DataError(f"{path} has no rows")
    if label not in rows[0]:
        raise DataError(f"{path} has no {label!r} column (columns: {', '.join(rows[0])})")
    return rows


def plan_encoding(rows: list[dict], label: str = TARGET, drop: tuple[str, ...] = DROP,
                  features: tuple[str, ...] = ()) -> dict:
    """Numeric columns are those whose every value parses as a number; the rest are one-hot categoricals.
    ``features`` empty: every column but the label and the ``drop`` (id) columns."""
    missing = [f for f in features if f not in rows[0]]
    if missing:
        raise DataError(f"feature column(s) {', '.join(missing)} are not in the data")
    columns = list(features) or [c for c in rows[0] if c != label and c not in drop]
    numeric, categorical = [], {}
    for col in columns:
        values = [r.get(col, "") for r in rows]
        if all(v == "" or not math.isnan(to_float(v)) for v in values):
            numeric.append(col)
        else:
            categorical[col] = sorted({str(v) for v in values})
    return {"numeric": numeric, "categorical": categorical, "target": label}


def labels(rows: list[dict], label: str = TARGET):
    import numpy as np

    y = []
    for i, r in enumerate(rows):
        v = str(r[label]).strip().lower()
        if v in ("1", "true", "yes", "1.0"):
            y.append(1)
        elif v in ("0", "false", "no", "0.0"):
            y.append(0)
        else:
            raise DataError(f"row {i + 2}: {label} must be 0/1, not {r[label]!r}")
    y = np.array(y, dtype=np.float32)
    if y.min() == y.max():
        raise DataError(f"{label} has a single class: nothing to learn")
    return y


def split(y, test_size: float, seed: int):
    """Stratified, seeded split: both classes appear in train and test."""
    import numpy as np

    rng = np.random.default_rng(seed)
    test = []
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        test.extend(idx[: max(1, int(round(len(idx) * test_size)))])
    mask = np.zeros(len(y), dtype=bool)
    mask[test] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def auc(y, p) -> float:
    """Area under the ROC curve as the Mann-Whitney U statistic (ties get average ranks)."""
    import numpy as np

    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), dtype=np.float64)
    sorted_p = p[order]
    i = 0
    while i < len(p):
        j = i
        while j + 1 < len(p) and sorted_p[j + 1] == sorted_p[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def evaluate(y, p) -> dict[str, float]:
    import numpy as np

    eps = 1e-7
    pc = np.clip(p, eps, 1 - eps)
    hard = (p >= 0.5).astype(int)
    tp = int(((hard == 1) & (y == 1)).sum())
    fp = int(((hard == 1) & (y == 0)).sum())
    fn = int(((hard == 0) & (y == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "auc": auc(y, p),
        "logloss": float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc))),
        "accuracy": float((hard == y).mean()),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
    }


def baseline(rows: list[dict], encoding: dict, predictions=None) -> dict:
    """The drift baseline profile (schema in baseline_profile.py): a sketch of every training feature and, when
    given, of the model's predicted scores on the same rows."""
    import numpy as np

    numeric = {col: np.array([to_float(r.get(col)) for r in rows], dtype=np.float64) for col in encoding["numeric"]}
    categorical = {col: [r.get(col) for r in rows] for col in encoding["categorical"]}
    return build_profile(numeric, categorical, rows=len(rows), prediction=predictions)


MLMODEL = """artifact_path: model
flavors:
  python_function:
    code: code
    data: .
    env:
      conda: conda.yaml
    loader_module: score
    python_version: {python}
model_uuid: {uuid}
utc_time_created: '{created}'
"""
CONDA = """name: churn-model
channels: [conda-forge]
dependencies:
  - python={python}
  - pip
  - pip: [mlflow, numpy, xgboost=={xgb}]
"""


def save_model(booster, encoding: dict, out: Path) -> None:
    """The model folder: booster, encoding and an MLflow pyfunc description, so a managed online endpoint can
    serve it without a scoring script (MLflow imports score.py from code/ and calls its _load_pyfunc)."""
    import uuid

    import xgboost as xgb

    out.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(out / "model.json"))
    (out / "encoding.json").write_text(json.dumps(encoding, indent=1))
    code = out / "code"
    code.mkdir(exist_ok=True)
    shutil.copy(Path(__file__).with_name("score.py"), code / "score.py")
    python = ".".join(map(str, sys.version_info[:3]))
    (out / "MLmodel").write_text(MLMODEL.format(python=python, uuid=uuid.uuid4().hex,
                                                created=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())))
    (out / "conda.yaml").write_text(CONDA.format(python=python, xgb=xgb.__version__))


def train(data: Path, output: Path, *, seed: int = 42, test_size: float = 0.25, max_rounds: int = 200,
          label: str = TARGET, id_columns: tuple[str, ...] = DROP, features: tuple[str, ...] = ()) -> dict:
    import numpy as np
    import xgboost as xgb

    started = time.perf_counter()
    rows = read_rows(data, label)
    y = labels(rows, label)
    if len(rows) < 20:
        raise DataError(f"{len(rows)} rows are too few to train and evaluate")
    encoding = plan_encoding(rows, label, id_columns, features)
    x = encode(rows, encoding)
    tr, te = split(y, test_size, seed)
    params = {"objective": "binary:logistic", "eval_metric": "logloss", "tree_method": "hist", "max_depth": 4,
              "eta": 0.08, "subsample": 0.9, "colsample_bytree": 0.9, "min_child_weight": 2, "seed": seed,
              "nthread": 2}
    dtrain = xgb.DMatrix(x[tr], label=y[tr], missing=np.nan)
    dtest = xgb.DMatrix(x[te], label=y[te], missing=np.nan)
    booster = xgb.train(params, dtrain, num_boost_round=max_rounds, evals=[(dtest, "test")],
                        early_stopping_rounds=20, verbose_eval=False)
    p = booster.predict(dtest, iteration_range=(0, booster.best_iteration + 1))
    metrics = evaluate(y[te], p)
    metrics.update({"n_train": float(len(tr)), "n_test": float(len(te)), "best_iteration": float(booster.best_iteration),
                    "train_seconds": time.perf_counter() - started})
    output.mkdir(parents=True, exist_ok=True)
    save_model(booster, encoding, output / "model")
    (output / "metrics.json").write_text(json.dumps(metrics, indent=1))
    train_scores = booster.predict(dtrain, iteration_range=(0, booster.best_iteration + 1))
    (output / "baseline.json").write_text(json.dumps(baseline([rows[i] for i in tr], encoding, train_scores)))
    shutil.copy(output / "baseline.json", output / "model" / "baseline.json")
    _log_mlflow(metrics, params)
    return metrics


def _log_mlflow(metrics: dict, params: dict) -> None:
    """On Azure ML the run's MLflow tracking is preconfigured; the automation reads these metrics from there."""
    try:
        import mlflow
    except ImportError:
        return
    mlflow.log_params({k: v for k, v in params.items() if k != "nthread"})
    mlflow.log_metrics(metrics)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--output", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--test-size", type=float, default=0.25)
    ap.add_argument("--max-rounds", type=int, default=200)
    ap.add_argument("--label", default=TARGET, help=f"the 0/1 label column (default {TARGET})")
    ap.add_argument("--id-columns", default=",".join(DROP), help="comma-separated columns never used as features")
    ap.add_argument("--features", default="", help="comma-separated feature columns (default: all the others)")
    args = ap.parse_args(argv)
    # The job's log (Azure ML's std_log.txt, the embedded backend's job.log) is this process's stderr.
    logging.basicConfig(level=logging.INFO, format="train.py: %(message)s", stream=sys.stderr)
    try:
        metrics = train(args.data, args.output, seed=args.seed, test_size=args.test_size, max_rounds=args.max_rounds,
                        label=args.label, id_columns=_names(args.id_columns), features=_names(args.features))
    except DataError as error:
        logger.error("cannot train: %s", error)
        return 2
    logger.info("metrics %s", json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    return 0


def _names(raw: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in raw.split(",") if c.strip() and c.strip() != "-")


if __name__ == "__main__":
    sys.exit(main())
