"""Load a trained churn model and score rows; also the MLflow pyfunc loader (``_load_pyfunc``) for managed endpoints.

Self-contained (stdlib, numpy, xgboost): it is copied into the model folder so the model serves on its own.
"""
from __future__ import annotations

import json
import math
from pathlib import Path


def encode(rows, encoding):
    """Rows (dicts of raw values) → a float matrix in the training column order. Unknown categories → all zeros;
    missing or unreadable numbers → NaN, which xgboost treats as missing."""
    import numpy as np

    numeric, categorical = encoding["numeric"], encoding["categorical"]
    width = len(numeric) + sum(len(c) for c in categorical.values())
    out = np.zeros((len(rows), width), dtype=np.float32)
    for i, row in enumerate(rows):
        j = 0
        for col in numeric:
            out[i, j] = to_float(row.get(col))
            j += 1
        for col, cats in categorical.items():
            value = str(row.get(col, ""))
            if value in cats:
                out[i, j + cats.index(value)] = 1.0
            j += len(cats)
    return out


def to_float(value) -> float:
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class Predictor:
    """A loaded model: ``predict(rows)`` returns churn probabilities."""

    def __init__(self, model_dir: Path | str) -> None:
        import xgboost as xgb

        model_dir = Path(model_dir)
        self.encoding = json.loads((model_dir / "encoding.json").read_text())
        self.booster = xgb.Booster()
        self.booster.load_model(str(model_dir / "model.json"))
        self.features = list(self.encoding["numeric"]) + list(self.encoding["categorical"])

    def predict(self, rows) -> list[float]:
        import xgboost as xgb

        if hasattr(rows, "to_dict"):  # a pandas DataFrame, as MLflow's pyfunc server passes it
            rows = rows.to_dict("records")
        rows = list(rows)
        if not rows:
            return []
        matrix = xgb.DMatrix(encode(rows, self.encoding), missing=math.nan)
        return [float(p) for p in self.booster.predict(matrix)]


def load(model_dir: Path | str) -> Predictor:
    return Predictor(model_dir)


def _load_pyfunc(data_path: str) -> Predictor:
    """MLflow's python_function flavor calls this with the model's data folder."""
    return Predictor(data_path)
