"""The training job's code: real xgboost on generated churn data, metrics, model folder, baseline, bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.local.churn import feature_rows, generate, write_csv, write_rows
from shared.training import score, train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    write_csv(d / "clean.csv", rows=2500, seed=11)
    write_csv(d / "noisy.csv", rows=2500, seed=12, label_noise=0.5)
    return d, train.train(d / "clean.csv", d / "clean-out"), train.train(d / "noisy.csv", d / "noisy-out")


def test_clean_data_learns_and_corrupted_labels_do_not(trained):
    _, clean, noisy = trained
    assert clean["auc"] > 0.75
    assert noisy["auc"] < 0.65
    assert noisy["logloss"] > clean["logloss"]
    for name in ("auc", "logloss", "accuracy", "precision", "recall", "f1", "n_train", "n_test"):
        assert name in clean


def test_the_output_holds_model_metrics_baseline_and_an_mlflow_description(trained):
    d, clean, _ = trained
    out = d / "clean-out"
    assert json.loads((out / "metrics.json").read_text())["auc"] == pytest.approx(clean["auc"])
    mlmodel = (out / "model" / "MLmodel").read_text()
    assert "python_function" in mlmodel and "loader_module: score" in mlmodel
    assert (out / "model" / "code" / "score.py").exists()
    base = json.loads((out / "baseline.json").read_text())
    assert base["features"]["contract"]["type"] == "categorical"
    assert sum(base["features"]["contract"]["shares"].values()) == pytest.approx(1.0)
    assert sum(base["features"]["monthly_charges"]["shares"]) == pytest.approx(1.0)
    assert "customer_id" not in base["features"]


def test_the_baseline_is_a_versioned_profile_with_sketches_frequencies_and_predictions(trained):
    d, clean, _ = trained
    base = json.loads((d / "clean-out" / "model" / "baseline.json").read_text())  # stored with the model
    assert base["schema_version"] == 2 and base["rows"] == clean["n_train"]
    charges = base["features"]["monthly_charges"]
    assert len(charges["quantiles"]) == 501 and charges["quantiles"] == sorted(charges["quantiles"])
    assert sum(charges["counts"]) == charges["count"] == base["rows"] - charges["missing"]
    assert len(charges["counts"]) == len(charges["edges"]) + 1
    contract = base["features"]["contract"]
    assert sum(contract["counts"].values()) + contract["other"] == contract["count"]
    prediction = base["prediction"]
    assert prediction["count"] == base["rows"] and 0.0 <= prediction["min"] <= prediction["max"] <= 1.0


def test_train_py_runs_from_its_own_folder_alone(tmp_path):
    """Azure ML uploads only shared/training as the job's code: train.py may not import the app's package."""
    import shutil

    code = tmp_path / "code"
    shutil.copytree(ROOT / "shared" / "training", code, ignore=shutil.ignore_patterns("__pycache__"))
    write_csv(tmp_path / "data.csv", rows=300, seed=3)
    run = subprocess.run([sys.executable, "-E", "-s", "train.py", "--data", str(tmp_path / "data.csv"), "--output",
                          str(tmp_path / "out"), "--max-rounds", "5"], cwd=code, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "baseline.json").read_text())["schema_version"] == 2


def test_the_saved_model_scores_raw_rows_and_unknown_categories(trained):
    d, _, _ = trained
    predictor = score.load(d / "clean-out" / "model")
    rows = feature_rows(50, seed=5)
    rows[0]["contract"] = "ten-year"  # never seen in training
    rows[1]["monthly_charges"] = ""  # missing value
    p = predictor.predict(rows)
    assert len(p) == 50 and all(0.0 <= x <= 1.0 for x in p)
    assert "contract" in predictor.features


def test_auc_matches_the_pairwise_definition():
    import numpy as np

    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.3).astype(float)
    p = np.round(rng.random(200), 1)  # many ties
    pos, neg = p[y == 1], p[y == 0]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert train.auc(y, p) == pytest.approx(pairwise)


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.csv", "does not exist"),
    (lambda d: write_rows(d / "nolabel.csv", [{k: v for k, v in r.items() if k != "churn"} for r in generate(50)]),
     "no 'churn' column"),
    (lambda d: write_rows(d / "oneclass.csv", [{**r, "churn": 0} for r in generate(50)]), "single class"),
])
def test_bad_input_exits_non_zero_with_a_clear_message(tmp_path, make, message):
    data = make(tmp_path)
    run = subprocess.run([sys.executable, "shared/training/train.py", "--data", str(data), "--output",
                          str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2
    assert message in run.stderr
    assert not (tmp_path / "out" / "model").exists()


def test_the_generator_is_deterministic_and_drift_shifts_the_population():
    assert generate(200, seed=3) == generate(200, seed=3)
    assert generate(200, seed=3) != generate(200, seed=4)
    calm, drifted = generate(3000, seed=1), generate(3000, seed=1, drift=0.8)
    share = lambda rows: sum(r["contract"] == "month-to-month" for r in rows) / len(rows)  # noqa: E731
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    assert share(drifted) > share(calm) + 0.15
    assert mean(drifted, "monthly_charges") > mean(calm, "monthly_charges") + 10
    assert mean(drifted, "support_calls") > mean(calm, "support_calls") + 1
