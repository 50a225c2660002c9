"""Synthetic customer-churn table: learnable, deterministic per seed, with knobs for drift and corrupted labels."""
from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

CONTRACTS = ("month-to-month", "one-year", "two-year")
PAYMENTS = ("electronic-check", "mailed-check", "bank-transfer", "credit-card")
INTERNET = ("dsl", "fiber-optic", "none")
FEATURES = ("tenure_months", "contract", "monthly_charges", "total_charges", "support_calls", "payment_method",
            "internet_service", "paperless_billing", "senior_citizen")
TARGET = "churn"
COLUMNS = ("customer_id", *FEATURES, TARGET)


def _check(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, not {value}")
    return float(value)


def generate(rows: int = 5000, *, seed: int = 0, drift: float = 0.0, label_noise: float = 0.0) -> list[dict]:
    """``rows`` customers as dicts in COLUMNS order.

    ``drift`` (0..1) moves the population the way production traffic drifts: more month-to-month contracts,
    shorter tenure, higher charges, more support calls. The churn mechanism itself does not change, so a
    drifted table is still scored sensibly; only its inputs look different from training.
    ``label_noise`` (0..1) flips that fraction of labels at random: at 0.5 the labels carry no signal.
    """
    import numpy as np

    if rows < 1:
        raise ValueError(f"rows must be at least 1, not {rows}")
    drift, label_noise = _check("drift", drift), _check("label_noise", label_noise)
    rng = np.random.default_rng(seed)

    p_mtm = 0.50 + 0.35 * drift
    p_two = (1.0 - p_mtm) * 0.5
    contract = rng.choice(len(CONTRACTS), size=rows, p=[p_mtm, 1.0 - p_mtm - p_two, p_two])
    # Longer contracts go with longer tenure; drift brings in newer customers.
    tenure_scale = np.array([10.0, 28.0, 45.0])[contract] * (1.0 - 0.5 * drift)
    tenure = np.clip(np.round(rng.gamma(1.6, tenure_scale / 1.6)), 0, 72).astype(int)
    p_fiber = 0.42 + 0.25 * drift
    p_none = 0.20 * (1.0 - drift)
    internet = rng.choice(len(INTERNET), size=rows, p=[1.0 - p_fiber - p_none, p_fiber, p_none])
    monthly = np.array([55.0, 85.0, 22.0])[internet] + rng.normal(0.0, 9.0, rows) + 18.0 * drift
    monthly = np.round(np.clip(monthly, 18.0, 130.0), 2)
    total = np.round(monthly * np.maximum(tenure, 1) * rng.normal(1.0, 0.04, rows), 2)
    support = rng.poisson(1.0 + 0.8 * (internet == 1) + 2.5 * drift)
    pay_p = np.array([0.33 + 0.3 * drift, 0.22, 0.23, 0.22])
    payment = rng.choice(len(PAYMENTS), size=rows, p=pay_p / pay_p.sum())
    paperless = rng.random(rows) < 0.58 + 0.2 * drift
    senior = rng.random(rows) < 0.16

    logit = (-1.6 + 1.5 * (contract == 0) - 1.0 * (contract == 2) - 0.045 * tenure
             + 0.028 * (monthly - 65.0) + 0.42 * support + 0.55 * (payment == 0) + 0.35 * senior
             + 0.25 * paperless + 0.35 * (internet == 1))
    churn = rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))
    flip = rng.random(rows) < label_noise
    churn = np.where(flip, ~churn, churn)

    out = []
    for i in range(rows):
        out.append({
            "customer_id": f"C{seed % 100000:05d}-{i:07d}",
            "tenure_months": int(tenure[i]),
            "contract": CONTRACTS[contract[i]],
            "monthly_charges": float(monthly[i]),
            "total_charges": float(total[i]),
            "support_calls": int(support[i]),
            "payment_method": PAYMENTS[payment[i]],
            "internet_service": INTERNET[internet[i]],
            "paperless_billing": "yes" if paperless[i] else "no",
            "senior_citizen": int(senior[i]),
            "churn": int(churn[i]),
        })
    return out


def feature_rows(rows: int = 100, *, seed: int = 0, drift: float = 0.0) -> list[dict]:
    """Scoring traffic: customers without the label, as a client would send them."""
    return [{k: v for k, v in r.items() if k != TARGET} for r in generate(rows, seed=seed, drift=drift)]


def write_rows(path: Path | str, records: Iterable[dict]) -> Path:
    """Write records as CSV with a header (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = list(records)
    columns = list(records[0]) if records else list(COLUMNS)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(records)
    return path


def write_csv(path: Path | str, *, rows: int = 5000, seed: int = 0, drift: float = 0.0,
              label_noise: float = 0.0) -> Path:
    """Generate a churn table and write it as CSV; returns the path."""
    out = write_rows(path, generate(rows, seed=seed, drift=drift, label_noise=label_noise))
    logger.info("wrote %d churn rows to %s (seed %d, drift %.2f, label noise %.2f)",
                rows, out, seed, drift, label_noise)
    return out


def churn_rate(records: Iterable[dict]) -> float:
    """Share of churned customers (NaN for no rows)."""
    labels = [int(r[TARGET]) for r in records]
    return sum(labels) / len(labels) if labels else math.nan
