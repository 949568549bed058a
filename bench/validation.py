"""Data-validation benchmark (a measurement, not a test): how long the GX gate at the start of every flow takes.

What it measures:

1. Scaling: a labeled MNIST-1D-shaped dataset of N rows (default 10k, 100k, 1M; ``id`` int64, ``x`` a 40-float32
   array column, ``label`` int64 in [0, 10); synthesised with numpy, seed 0) validated as ``val`` against a
   4,000-row train reference, with the default :class:`kdflow.config.ValidationConfig` (every check on every
   row, the feature-range and feature-scale checks on a 100,000-row deterministic sample, the val-vs-train id
   overlap check, Data Docs built; the config's test split is a distinct file, not read). Reported: Parquet read
   time, validation time (profiling + GX + Data Docs, ``report.seconds``) and their sum, for the N-row dataset
   (the 4k reference's own time is measured separately and subtracted out by timing it alone first).
2. Demo size: train 4,000 / val 1,000 / test 1,000 / transfer 50,000 (the demo's own files under
   ``.kdflow/data/mnist1d`` when present, else synthesised at those sizes), validated end to end with
   :func:`kdflow.validation.validate_data` exactly as the flow's first task does (read + validate + Data Docs).
   That time is compared with the wall time of the most recent FINISHED distill run recorded in the demo's
   MLflow database (``--mlflow-uri``, default ``sqlite:///.kdflow/mlflow.db``; end_time - start_time of the
   run, which the flow opens before validation), or with ``--flow-seconds`` when given.

Bars: validation under 10% of the distill flow's wall time at the demo size, under 30 s at 1M rows.
The GX import (once per process) is timed separately and excluded from both.

Run (from the repository root)::

    .venv/bin/python bench/validation.py --json bench/results/validation.json
    .venv/bin/python bench/validation.py --sizes 10000 --json /tmp/v.json       # smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _common import cpu_model

from kdflow.config import DataConfig, ValidationConfig
from kdflow.data import to_frame, write_parquet
from kdflow.validation import read_split, validate_data, validate_splits

DEMO_SIZES = {"train": 4000, "val": 1000, "test": 1000, "transfer": 50_000}
DEMO_DATA = Path(".kdflow/data/mnist1d")
WIDTH, CLASSES = 40, 10
BARS = {"demo_fraction_max": 0.10, "seconds_at_1m_max": 30.0}


def synthetic(n: int, seed: int, first_id: int = 0, labeled: bool = True) -> pd.DataFrame:
    """``n`` MNIST-1D-shaped rows: 40 float32 features (N(0, 1)), labels cycling over the 10 classes."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, WIDTH)).astype(np.float32)
    return to_frame(np.arange(first_id, first_id + n), x, rng.permutation(np.arange(n) % CLASSES) if labeled else None)


def scaling_run(n: int, root: Path, config: ValidationConfig) -> dict[str, float]:
    """Validate an ``n``-row labeled dataset as ``val`` against a 4k-row train reference; seconds per stage."""
    train = str(write_parquet(synthetic(DEMO_SIZES["train"], 1), root / "train.parquet"))
    val = str(write_parquet(synthetic(n, 2, first_id=10_000_000), root / f"val-{n}.parquet"))
    # A test split of its own (ids disjoint from train's and val's): val as test would be a leak the id check
    # stops. Only train and val are validated below, so the measurement is val's alone, as before.
    test = str(write_parquet(synthetic(DEMO_SIZES["test"], 3, first_id=5_000_000), root / "test.parquet"))
    data = DataConfig(train=train, val=val, test=test, num_classes=CLASSES)
    t0 = time.perf_counter()
    reference = {"train": read_split("train", train, True)}
    ref_report, _ = validate_splits(reference, data, config, root / f"docs-ref-{n}")
    t2 = time.perf_counter()
    both = {**reference, "val": read_split("val", val, True)}
    t3 = time.perf_counter()
    report, _ = validate_splits(both, data, config, root / f"docs-{n}")
    assert report.success, report.error_message()
    return {
        "rows": n,
        "read_s": round(t3 - t2, 3),
        "validate_s": round(report.seconds - ref_report.seconds, 3),
        "total_s": round(t3 - t2 + report.seconds - ref_report.seconds, 3),
        "reference_only_s": round(t2 - t0, 3),
    }


def demo_data(root: Path) -> tuple[DataConfig, str]:
    """The demo's own splits if generated, else synthetic splits of the demo sizes."""
    paths = {name: DEMO_DATA / f"{name}.parquet" for name in DEMO_SIZES}
    if all(p.is_file() for p in paths.values()):
        return DataConfig(num_classes=CLASSES, **{k: str(v) for k, v in paths.items()}), f"demo files in {DEMO_DATA}"
    first = 0
    for seed, (name, n) in enumerate(DEMO_SIZES.items()):
        frame = synthetic(n, seed, first, labeled=name != "transfer")
        paths[name] = write_parquet(frame, root / f"demo-{name}.parquet")
        first += n
    data = DataConfig(num_classes=CLASSES, **{k: str(v) for k, v in paths.items()})
    return data, "synthetic splits of the demo sizes"


def last_distill_seconds(tracking_uri: str) -> tuple[float | None, str]:
    """Wall time of the most recent FINISHED run of the ``kdflow-distill`` experiment, and its id."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("kdflow-distill")
    if experiment is None:
        return None, "no kdflow-distill experiment"
    runs = client.search_runs(
        [experiment.experiment_id],
        "attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None, "no finished distill run"
    info = runs[0].info
    return (info.end_time - info.start_time) / 1000.0, f"MLflow run {info.run_id} ({tracking_uri})"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print a summary and write JSON if asked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated row counts")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--mlflow-uri", default=f"sqlite:///{Path('.kdflow/mlflow.db').resolve()}")
    parser.add_argument("--flow-seconds", type=float, help="distill flow wall time to compare with (overrides MLflow)")
    args = parser.parse_args(argv)
    config = ValidationConfig()

    t = time.perf_counter()
    import great_expectations  # noqa: F401  (imported once per process; timed apart)

    import_s = time.perf_counter() - t

    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_model(),
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
            "python": platform.python_version(),
        },
        "config": config.model_dump(),
        "gx_import_s": round(import_s, 3),
        "scaling": [],
        "bars": BARS,
    }
    with tempfile.TemporaryDirectory(prefix="kdflow-bench-validation-") as tmp:
        root = Path(tmp)
        warm = str(write_parquet(synthetic(100, 9), root / "warm.parquet"))  # first-call costs out of the timings
        validate_splits(
            {"train": read_split("train", warm, True)},
            DataConfig(train="-", val="-", test="-", num_classes=CLASSES),
            config,
            root / "warm-docs",
        )
        for n in (int(size) for size in args.sizes.split(",")):
            row = scaling_run(n, root, config)
            results["scaling"].append(row)
            print(
                f"{n:>9,} rows: read {row['read_s']:6.2f} s  validate {row['validate_s']:6.2f} s  "
                f"total {row['total_s']:6.2f} s"
            )
        data, source = demo_data(root)
        t = time.perf_counter()
        report, _ = validate_data(data, config, docs_dir=root / "demo-docs")
        demo_s = time.perf_counter() - t
    if args.flow_seconds:
        flow_s, flow_source = args.flow_seconds, "--flow-seconds"
    else:
        flow_s, flow_source = last_distill_seconds(args.mlflow_uri)
    results["demo"] = {
        "data": source,
        "rows": {n: d.rows for n, d in report.datasets.items()},
        "passed": report.success,
        "validation_s": round(demo_s, 3),
        "flow_s": flow_s,
        "flow_source": flow_source,
        "fraction": round(demo_s / flow_s, 4) if flow_s else None,
    }
    at_1m = next((r["total_s"] for r in results["scaling"] if r["rows"] == 1_000_000), None)
    results["checks"] = {
        "demo_fraction_under_10pct": None if not flow_s else demo_s / flow_s < BARS["demo_fraction_max"],
        "1m_rows_under_30s": None if at_1m is None else at_1m < BARS["seconds_at_1m_max"],
    }
    print(
        f"demo size ({source}): validation {demo_s:.2f} s"
        + (
            f" = {100 * demo_s / flow_s:.2f}% of the distill flow's {flow_s:.1f} s ({flow_source})"
            if flow_s
            else f"; no flow time to compare with ({flow_source})"
        )
    )
    print(f"bars: {results['checks']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
