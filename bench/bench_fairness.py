"""Bias audit over 1,000,000 labelled rows: time and peak memory, side by side with fairlearn used directly.

Data: the German credit demo model's background (1,000 rows) resampled to 1,000,000 rows with a
seed; each row's label is drawn from the model's own P("good") with a seed (so the model is
neither perfect nor useless on it). Written once as Parquet and CSV under ``bench/out/fairness/``.

Measured, each in its own subprocess (peak RSS of the process, from ``getrusage``):

1. ``explain-service fairness`` end to end (read in chunks, validate, predict, count, fairlearn
   figures, 1,000 bootstrap resamples, audit record) on Parquet and CSV, by sex and age band with
   their intersection, chunks of 50,000 rows.
2. The same question asked of fairlearn directly, the way a notebook would: read the whole
   Parquet file with pandas, ``predict_proba`` on all rows, ``MetricFrame`` per feature plus the four
   disparity functions, no bootstrap.
3. Peak memory vs chunk size (10,000 and 200,000 rows) and vs input size (250,000 vs 1,000,000
   rows at the same chunk size).
4. Bootstrap cost: our 1,000 multinomial resamples of the confusion counts vs
   ``MetricFrame(n_boot=3)`` on the 1,000,000 rows, per resample.

Run: ``python bench/bench_fairness.py`` (``make bench`` runs every benchmark).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import ROOT, write_section

MODELS = ROOT / "bench" / "out" / "models"
OUT = ROOT / "bench" / "out" / "fairness"
N_ROWS = 1_000_000
N_SMALL = 250_000
CHUNK = 50_000
SEED = 12
N_BOOT = 3  # fairlearn resamples the 1,000,000 rows each time: a few resamples give the cost of one


def make_input(n: int) -> tuple[Path, Path]:
    """``german_<n>.parquet`` and ``.csv``: background rows resampled, labels drawn from the model."""
    from explain_service.registry.demo import build_demo
    from explain_service.registry.store import ModelRegistry

    OUT.mkdir(parents=True, exist_ok=True)
    build_demo(MODELS, only=["german-credit"])
    parquet, csv = OUT / f"german_{n}.parquet", OUT / f"german_{n}.csv"
    if parquet.exists() and csv.exists():
        return parquet, csv
    model = ModelRegistry(MODELS).get("german-credit")
    rng = np.random.default_rng(SEED)
    rows = model.background.iloc[rng.integers(0, len(model.background), n)].reset_index(drop=True)
    p_good = model.predict_proba(rows)[:, model.class_names.index("good")]
    rows["risk"] = np.where(rng.random(n) < p_good, "good", "bad")
    rows.to_parquet(parquet, row_group_size=100_000, index=False)
    rows.to_csv(csv, index=False)
    return parquet, csv


def audit_path(data: Path, chunk: int) -> Path:
    """Where a measured audit of ``data`` at ``chunk`` rows per chunk writes its answer."""
    return OUT / f"audit_{data.stem}_{data.suffix[1:]}_{chunk}.json"


def child(kind: str, path: str, chunk: int) -> None:
    """One measured run in this (fresh) process; prints a JSON line with seconds and peak RSS."""
    t0 = time.perf_counter()
    if kind == "ours":
        from click.testing import CliRunner

        from explain_service.cli import main

        args = ["fairness", "--model", "german-credit", "--data", path, "--label", "risk"]
        args += ["--sensitive", "sex,age", "--intersect", "--chunk-size", str(chunk)]
        args += ["--models-dir", str(MODELS), "--database-url", f"sqlite:///{OUT / 'audit.sqlite3'}"]
        args += ["--output", str(audit_path(Path(path), chunk))]
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        if result.exit_code != 0:
            raise RuntimeError(result.output)
    else:
        t0 = _direct(kind, path, t0)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb}))


def _direct(kind: str, path: str, t0: float) -> float:
    """fairlearn on the whole frame (``fairlearn``, ``fairlearn_boot``), or our bootstrap alone
    (``our_boot``) on the same rows' confusion counts; returns the start time to measure from."""
    import pandas as pd
    from fairlearn.metrics import (
        MetricFrame,
        demographic_parity_difference,
        demographic_parity_ratio,
        equal_opportunity_difference,
        equalized_odds_difference,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )

    from explain_service.fairness.audit import AuditPlan, CountAccumulator
    from explain_service.fairness.groups import group_labels
    from explain_service.fairness.metrics import bootstrap_intervals
    from explain_service.registry.store import ModelRegistry

    model = ModelRegistry(MODELS).get("german-credit")
    frame = pd.read_parquet(path)
    y_pred = model.predict_proba(model.schema.coerce(frame[model.schema.names])).argmax(axis=1) == 1
    y_true = frame["risk"].to_numpy() == "good"
    if kind == "our_boot":
        plan = AuditPlan({"sex": None, "age": (0, 25, 40, 60, 200)}, "good", intersect=True)
        acc = CountAccumulator(plan)
        acc.add({"sex": frame["sex"], "age": frame["age"]}, y_true, y_pred)
        t0 = time.perf_counter()
        for grouping in plan.groupings:
            bootstrap_intervals(acc.groups(grouping), 1000, 0)
        return t0
    sex = group_labels(frame["sex"], None)
    age = group_labels(frame["age"], [0, 25, 40, 60, 200])
    both = np.char.add(np.char.add(sex.astype(str), " & "), age.astype(str))
    rates = {"selection_rate": selection_rate, "tpr": true_positive_rate, "fpr": false_positive_rate}
    boot: dict = {}
    if kind == "fairlearn_boot":
        boot = {"n_boot": N_BOOT, "ci_quantiles": [0.025, 0.975], "random_state": 0}
        t0 = time.perf_counter()  # the bootstrap alone, as for ours
    for groups in (sex, age, both):
        MetricFrame(metrics=rates, y_true=y_true, y_pred=y_pred, sensitive_features=groups, **boot)
        if not boot:
            for fn in (
                demographic_parity_difference,
                demographic_parity_ratio,
                equal_opportunity_difference,
                equalized_odds_difference,
            ):
                fn(y_true, y_pred, sensitive_features=groups)
    return t0


def measure(kind: str, path: Path, chunk: int = CHUNK) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(path), str(chunk)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parquet, csv = make_input(N_ROWS)
    small_parquet, _ = make_input(N_SMALL)
    runs = {
        "ours_parquet": measure("ours", parquet),
        "fairlearn": measure("fairlearn", parquet),
        "ours_csv": measure("ours", csv),
        "ours_parquet_10k": measure("ours", parquet, 10_000),
        "ours_parquet_200k": measure("ours", parquet, 200_000),
        "ours_small": measure("ours", small_parquet),
        "our_boot": measure("our_boot", parquet),
        "fairlearn_boot": measure("fairlearn_boot", parquet),
    }
    for name, r in runs.items():
        print(f"{name}: {r['seconds']:.2f} s, peak {r['peak_mb']:.0f} MB", flush=True)
    audit = json.loads(audit_path(parquet, CHUNK).read_text())
    same = all(
        json.loads(audit_path(data, chunk).read_text())["by_feature"] == audit["by_feature"]
        for data, chunk in ((csv, CHUNK), (parquet, 10_000), (parquet, 200_000))
    )
    ours, ref = runs["ours_parquet"], runs["fairlearn"]
    boot_per = runs["our_boot"]["seconds"] / 1000
    fl_boot_per = runs["fairlearn_boot"]["seconds"] / N_BOOT
    body = f"""
### 1,000,000 labelled German-credit rows, by sex, age band and their intersection

| run | time (s) | peak RSS (MB) |
|---|---|---|
| `explain-service fairness`, Parquet, chunks of {CHUNK:,} (1,000 bootstrap resamples, audit record) | {ours["seconds"]:.1f} | {ours["peak_mb"]:.0f} |
| `explain-service fairness`, CSV, chunks of {CHUNK:,} | {runs["ours_csv"]["seconds"]:.1f} | {runs["ours_csv"]["peak_mb"]:.0f} |
| fairlearn directly: whole Parquet in pandas, predict_proba, MetricFrame + 4 metrics per grouping, no bootstrap | {ref["seconds"]:.1f} | {ref["peak_mb"]:.0f} |

- Ours vs fairlearn used directly on the same Parquet file: **{ours["seconds"] / ref["seconds"]:.2f}x** the time, **{ours["peak_mb"] / ref["peak_mb"]:.2f}x** the peak memory; ours also validates every row, computes the intervals and stores the audit record.
- Figures identical across CSV/Parquet and chunk sizes 10,000 / 50,000 / 200,000: {"yes" if same else "NO"}.
- Time includes start-up (imports, model load) in both columns; the fairlearn run holds the whole frame and its predictions.

### Peak memory is set by the chunk size, not the rows

| rows | chunk size | time (s) | peak RSS (MB) |
|---|---|---|---|
| 1,000,000 | 10,000 | {runs["ours_parquet_10k"]["seconds"]:.1f} | {runs["ours_parquet_10k"]["peak_mb"]:.0f} |
| 1,000,000 | 50,000 | {ours["seconds"]:.1f} | {ours["peak_mb"]:.0f} |
| 1,000,000 | 200,000 | {runs["ours_parquet_200k"]["seconds"]:.1f} | {runs["ours_parquet_200k"]["peak_mb"]:.0f} |
| 250,000 | 50,000 | {runs["ours_small"]["seconds"]:.1f} | {runs["ours_small"]["peak_mb"]:.0f} |

- 4x the rows at the same chunk size: **{ours["peak_mb"] / runs["ours_small"]["peak_mb"]:.2f}x** the peak memory.
- Load average at the end of the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; on a shared machine single-run times vary, peak memory does not.

### Bootstrap

- Ours: 1,000 multinomial resamples of the confusion counts of the three groupings in {runs["our_boot"]["seconds"] * 1000:.1f} ms ({boot_per * 1000:.3f} ms per resample).
- fairlearn `MetricFrame(n_boot={N_BOOT})` (selection rate, TPR, FPR) on the 1,000,000 rows, three groupings, after loading and predicting: {runs["fairlearn_boot"]["seconds"]:.1f} s (the point estimate and {N_BOOT} resamples), about {fl_boot_per:.2f} s per resample: **{fl_boot_per / max(boot_per, 1e-9):,.0f}x** ours per resample.
- Versions: fairlearn {_version("fairlearn")}, xgboost {_version("xgboost")}, pandas {_version("pandas")}.
"""
    write_section("Fairness audit", body, "python bench/bench_fairness.py")
    print(body)


def _version(dist: str) -> str:
    from importlib import metadata

    return metadata.version(dist)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
