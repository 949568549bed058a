"""Out-of-core precompute benchmark (a benchmark script, not a test): the real precompute flow (``flows/logits.py``,
Prefect's ephemeral API, MLflow on SQLite, local store) over a transfer set of ``--rows`` rows of the MNIST-1D
shape (40 float32 features, 10 classes) plus 20,000-row train/val/test splits, run twice in fresh interpreters:

* ``in_memory`` — ``data.out_of_core: false``: every split read whole, validated by GX as one frame, fingerprinted
  and planned in the flow process, each shard's rows handed to its task;
* ``out_of_core`` — ``data.out_of_core: true``: validated chunk by chunk (``validation.chunk_rows``) from the
  Parquet files, fingerprinted in two passes, each shard task reading its own row groups.

Both runs use the thread runner (or ``--runner dask``: a local cluster of 2 worker processes), ``store.workers`` 2,
``store.rows_per_shard`` 262,144 (``--rows-per-shard``), and a random-weight 2x256
MLP teacher registered in MLflow (scoring is cheap, so validation and I/O dominate). Reported per mode: wall time
of the flow, the flow process's peak RSS (``VmHWM``; Prefect's ephemeral API server runs in a process of its own
and is not counted), each Dask worker's (sampled every 0.5 s), and the transfer store's key (the two must be equal: same fingerprint) and shard checksums
(must be equal). Exit 1 if they differ.

Run (from the repository root)::

    .venv/bin/python bench/out_of_core.py --rows 10000000 --json bench/results/out_of_core_10m.json
    .venv/bin/python bench/out_of_core.py --rows 100000000 --modes out_of_core --runner dask \\
        --json bench/results/out_of_core_100m.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, load_avg, vmhwm_mib, write_json  # noqa: E402
from logits_dask import FEATURES, NUM_CLASSES, teacher, write_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = 20_000


def write_small(path: Path, first_id: int, seed: int) -> str:
    """A labeled 20,000-row split of the benchmark's layout (every class present)."""
    from kdflow.data import to_frame, write_parquet

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((SMALL, FEATURES), dtype=np.float32)
    y = np.arange(SMALL) % NUM_CLASSES
    return str(write_parquet(to_frame(np.arange(first_id, first_id + SMALL), x, y), path, row_group_size=8192))


def prepare(state: Path, rows: int, rows_per_file: int, row_group: int, rows_per_shard: int) -> dict[str, Any]:
    """Data, a registered teacher and the distill config the precompute flow reads (``out_of_core`` left out)."""
    import yaml

    import mlflow
    from kdflow.config import packaged_config
    from kdflow.registry import configure_tracking, log_torch_model

    write_data(state / "transfer", rows, rows_per_file, row_group)
    data = {
        name: write_small(state / f"{name}.parquet", 10**12 + i * SMALL, i)
        for i, name in enumerate(("train", "val", "test"))
    }
    tracking = f"sqlite:///{state}/mlflow.db"
    configure_tracking(tracking)
    mlflow.set_experiment("bench-out-of-core")
    with mlflow.start_run():
        log_torch_model(teacher("mlp"), np.zeros((2, FEATURES), np.float32), "bench-teacher")
    cfg = yaml.safe_load(packaged_config("mnist1d_distill.yaml").read_text())
    cfg["teacher_uri"] = "models:/bench-teacher/1"
    cfg["data"].update(data, transfer=str(state / "transfer"), num_classes=NUM_CLASSES)
    cfg["mlflow"] = {"tracking_uri": tracking, "artifact_location": str(state / "artifacts")}
    cfg["store"] = {"root": str(state / "store"), "rows_per_shard": rows_per_shard, "workers": 2}
    cfg["validation"] = {"data_docs": False}
    cfg["evaluation"] = {"latency_batches": 20, "throughput_batches": 2}
    return cfg


class ChildPeaks(threading.Thread):
    """Peak RSS (``VmHWM``) of every process under this one, sampled every 0.5 s until stopped; the Dask workers of
    a local cluster (spawned by multiprocessing) are told apart from other helpers by their command lines."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peaks: dict[int, tuple[str, float]] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stopped.wait(0.5):
            for proc in psutil.Process().children(recursive=True):
                try:
                    with open(f"/proc/{proc.pid}/status") as f:
                        hwm = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
                    cmd = " ".join(proc.cmdline())
                except (OSError, psutil.Error, StopIteration):
                    continue
                kind = "worker" if "spawn_main" in cmd else "other"  # e.g. multiprocessing's resource tracker
                self.peaks[proc.pid] = (kind, max(hwm, self.peaks.get(proc.pid, ("", 0.0))[1]))


def child(config: str) -> None:
    """One flow run in this (fresh) process; prints its figures as JSON."""
    for var in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        os.environ.pop(var, None)
    from flows.logits import precompute_flow
    from kdflow.config import DistillConfig, load_config
    from tasks.logits import task_runner_for

    flow = precompute_flow.with_options(
        task_runner=task_runner_for(load_config(config, DistillConfig).store)
    )  # as the CLI
    peaks = ChildPeaks()
    peaks.start()
    start = time.perf_counter()
    out = flow(config)
    seconds = time.perf_counter() - start
    peaks.stopped.set()
    peaks.join()
    workers = sorted(round(mib) for kind, mib in peaks.peaks.values() if kind == "worker")
    print(
        json.dumps(
            {
                "seconds": seconds,
                "vmhwm_mib": vmhwm_mib(),
                "worker_vmhwm_mib": workers,
                "stores": out["stores"],
                "stats": out["stats"],
            }
        )
    )


def run_mode(state: Path, cfg: dict[str, Any], mode: str, runner: str) -> dict[str, Any]:
    import yaml

    cfg = json.loads(json.dumps(cfg))
    cfg["data"]["out_of_core"] = mode == "out_of_core"
    cfg["store"]["task_runner"] = runner
    cfg["store"]["root"] = str(state / f"store-{mode}")
    path = state / f"{mode}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PREFECT_HOME": str(state / f"prefect-{mode}"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.update(
        PREFECT_LOGGING_LEVEL="WARNING", PYTHONPATH=str(ROOT), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120"
    )
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(path)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if proc.returncode:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    store = Path(cfg["store"]["root"])
    key = result["stores"]["transfer"].split(str(store), 1)[1].strip("/")
    manifest = json.loads((store / key / "manifest.json").read_text())
    result["transfer_key"] = key
    result["transfer_shards"] = [s["sha256"] for s in manifest["shards"]]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--rows-per-file", type=int, default=1_000_000)
    parser.add_argument("--row-group", type=int, default=65_536)
    parser.add_argument("--rows-per-shard", type=int, default=262_144)
    parser.add_argument("--modes", nargs="+", default=["in_memory", "out_of_core"])
    parser.add_argument("--runner", choices=["threads", "dask"], default="threads", help="store.task_runner")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    load_before = load_avg()
    with tempfile.TemporaryDirectory(prefix="kdflow-bench-ooc-") as tmp:
        state = Path(tmp)
        cfg = prepare(state, args.rows, args.rows_per_file, args.row_group, args.rows_per_shard)
        results = {}
        for mode in args.modes:
            results[mode] = r = run_mode(state, cfg, mode, args.runner)
            print(
                f"{mode}: {r['seconds']:.1f} s, flow process peak {r['vmhwm_mib']:.0f} MiB, store {r['transfer_key']}"
            )
    keys = {r["transfer_key"] for r in results.values()}
    shards = {tuple(r["transfer_shards"]) for r in results.values()}
    same = len(keys) == 1 and len(shards) == 1
    print("stores identical" if same else "STORES DIFFER")
    if args.json:
        payload = {
            "command": " ".join(["bench/out_of_core.py", *(argv or sys.argv[1:])]),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu_model(),
            "load_avg_before": load_before,
            "rows": args.rows,
            "runner": args.runner,
            "rows_per_shard": args.rows_per_shard,
            "results": {m: {k: v for k, v in r.items() if k != "transfer_shards"} for m, r in results.items()},
            "stores_identical": same,
        }
        write_json(args.json, payload)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
