"""Distributed precompute benchmark (a benchmark script, not a test): teacher logits for N synthetic rows of the
MNIST-1D shape (n, 40), 10 classes, precomputed two ways with the same kdflow steps the Prefect tasks run
(:func:`kdflow.logits.compute_shard` per shard, :func:`kdflow.logits.finalize_shards` last):

* ``threads`` — what ``store.task_runner: threads`` does: the whole split is loaded into the planning process
  (here with the Arrow reader, :func:`kdflow.rowgroups.read_rows`, faster than the flow's validation + pandas
  path), then ``--workers`` threads score and write one shard each at a time.
* ``dask`` — what ``store.task_runner: dask`` does: a ``distributed.LocalCluster`` of ``--workers`` worker
  processes (1 thread each); the planning process reads only the Parquet footers
  (:func:`kdflow.rowgroups.split_layout`) and each worker reads its shard's row groups itself
  (:func:`kdflow.rowgroups.read_rows`, S3 ranged GETs with ``--s3``), scores them and writes the shard.

Prefect's task orchestration is not included (a few tasks of up to millions of rows each: its per-task cost is
small next to a shard). Each mode runs in a fresh interpreter; peak memory is ``VmHWM`` of the planning process
and of every worker process (``/proc/<pid>/status``, read in the worker via ``client.run``). Rows/s counts the
whole precompute: loading (threads), reading, scoring, writing the shards and the manifest. The two stores'
shard checksums are compared (they must be identical). Data: ``--rows`` rows written as Parquet files of
``--rows-per-file`` rows in row groups of ``--row-group`` rows (local files, or uploaded to a moto S3 server on
127.0.0.1 with ``--s3``); the teacher has random weights (throughput does not depend on them): ``cnn1d`` is the
demo teacher of ``bench/logits.py`` (64 channels, depth 4), ``mlp`` a 2x256 MLP (scoring ~20x cheaper, so
reading and writing dominate). Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` in its workers, which made
the teacher's forward pass about 2x slower there (every batch's buffers mapped and unmapped again); kdflow's
local cluster and this benchmark unset it (``--malloc-trim`` keeps it, to measure the difference).

Run (from the repository root)::

    .venv/bin/python bench/logits_dask.py --rows 1000000 --json bench/results/logits_dask_1m.json
    .venv/bin/python bench/logits_dask.py --rows 10000000 --teacher mlp --json bench/results/logits_dask_10m.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, load_avg, vmhwm_mib, write_json  # noqa: E402

TEACHERS = {
    "cnn1d": ("cnn1d", {"channels": 64, "depth": 4, "kernel_size": 5}),
    "mlp": ("mlp", {"width": 256, "depth": 2}),
}
NUM_CLASSES, FEATURES = 10, 40


def write_data(out: Path, rows: int, rows_per_file: int, row_group: int) -> list[Path]:
    """Synthetic normal rows in kdflow's layout (``id``, list column ``x``), written file by file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    paths, rng = [], np.random.default_rng(0)
    for i, start in enumerate(range(0, rows, rows_per_file)):
        n = min(rows_per_file, rows - start)
        flat = pa.array(rng.standard_normal(n * FEATURES, dtype=np.float32))
        x = pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * FEATURES, FEATURES, dtype=np.int32)), flat)
        table = pa.table({"id": pa.array(np.arange(start, start + n, dtype=np.int64)), "x": x})
        path = out / f"part-{i:05d}.parquet"
        pq.write_table(table, path, row_group_size=row_group)
        paths.append(path)
    return paths


def teacher(name: str):  # noqa: ANN201 - a torch module
    """The benchmark teacher, the same random weights in every process."""
    import torch

    from kdflow.models import build_model

    torch.manual_seed(0)
    arch, args = TEACHERS[name]
    return build_model(arch, dict(args), (FEATURES,), NUM_CLASSES).eval()


def _setup_worker(name: str, torch_threads: int, dask_worker=None) -> int:  # noqa: ANN001
    import torch

    torch.set_num_threads(torch_threads)
    dask_worker.kdflow_bench_teacher = teacher(name)
    return torch_threads


def _worker_shard(spec, job, source, root: str, endpoint: str | None, data):  # noqa: ANN001, ANN202
    """One shard on a Dask worker: read its row groups, score, write the shard (what the dask task does)."""
    import time

    import torch
    from distributed import get_worker

    from kdflow.device import score_logits
    from kdflow.logits import LogitStore, compute_shard
    from kdflow.rowgroups import read_rows
    from kdflow.store import open_store

    t0 = time.perf_counter()
    ids, x = read_rows(source, data)
    t1 = time.perf_counter()
    model = get_worker().kdflow_bench_teacher
    ls = LogitStore(open_store(root, endpoint_url=endpoint), spec.key)
    scored = score_logits(model, x, torch.device("cpu"))
    t2 = time.perf_counter()
    result = compute_shard(ls, spec, job, ids, lambda: scored)
    return result, {"read": t1 - t0, "score": t2 - t1, "write": time.perf_counter() - t2}


def _worker_peak(dask_worker=None) -> float:  # noqa: ANN001
    return vmhwm_mib()


def run_mode(spec_path: Path) -> dict[str, Any]:
    """One mode in this (fresh) interpreter; returns its figures."""
    import torch

    from kdflow.config import DataConfig
    from kdflow.device import score_logits
    from kdflow.logits import LogitStore, ShardJob, ShardPlan, StoreSpec, compute_shard, finalize_shards, shard_slices
    from kdflow.rowgroups import read_rows, shard_source, split_layout
    from kdflow.store import open_store

    s = json.loads(spec_path.read_text())
    data = DataConfig(train="unused", val="unused", test="unused", num_classes=NUM_CLASSES)
    spec = StoreSpec("bench", "bench-teacher", "1", "f" * 64, "transfer", rows_per_shard=s["rows_per_shard"])
    ls = LogitStore(open_store(s["root"], endpoint_url=s["endpoint"]), spec.key)
    out: dict[str, Any] = {"mode": s["mode"], "after_imports_mib": vmhwm_mib()}
    start = time.perf_counter()
    layout = split_layout(s["uri"], s["endpoint"])  # Parquet footers only
    rows = sum(n for _, n in layout)
    jobs = [ShardJob(i, r.start, r.stop) for i, r in enumerate(shard_slices(rows, s["rows_per_shard"]))]
    if s["mode"] == "threads":
        torch.set_num_threads(s["torch_threads"])
        model = teacher(s["teacher"])
        ids, x = read_rows(shard_source(layout, 0, rows, s["endpoint"]), data)  # the whole split, as the flow has it
        out["load_seconds"] = time.perf_counter() - start

        def one(job: ShardJob):  # noqa: ANN202
            score = lambda: score_logits(model, x[job.rows], torch.device("cpu"))  # noqa: E731
            return compute_shard(ls, spec, job, ids[job.rows], score)

        with ThreadPoolExecutor(s["workers"]) as pool:
            results = list(pool.map(one, jobs))
        out["worker_peak_mib"] = {}
    else:
        import dask
        from distributed import Client, LocalCluster

        if not s["malloc_trim"]:  # what kdflow's local cluster does (tasks.logits.task_runner_for)
            dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
        out["worker_env_malloc_trim"] = s["malloc_trim"]
        with (
            LocalCluster(
                n_workers=s["workers"], threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            client.run(_setup_worker, s["teacher"], s["torch_threads"])
            out["cluster_start_seconds"] = time.perf_counter() - start
            start = time.perf_counter()
            layout = split_layout(s["uri"], s["endpoint"])
            futures = [
                client.submit(
                    _worker_shard,
                    spec,
                    job,
                    shard_source(layout, job.start, job.stop, s["endpoint"]),
                    s["root"],
                    s["endpoint"],
                    data,
                    pure=False,
                )
                for job in jobs
            ]
            pairs = client.gather(futures)
            results = [r for r, _ in pairs]
            out["shard_seconds"] = [t for _, t in pairs]
            out["worker_env"] = client.run(lambda: __import__("os").environ.get("MALLOC_TRIM_THRESHOLD_"))
            out["worker_peak_mib"] = client.run(_worker_peak)
    stats = finalize_shards(ls, spec, ShardPlan(len(jobs), jobs=jobs), results, time.perf_counter() - start)
    out.update(
        rows=rows,
        shards=len(jobs),
        seconds=time.perf_counter() - start,
        rows_per_second=rows / (time.perf_counter() - start),
        planner_peak_mib=vmhwm_mib(),
        shard_sha256=[r.sha256 for r in ls.require_manifest().shards],
        rows_computed=stats.rows_computed,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=10_000_000, help="synthetic rows (default 10,000,000)")
    p.add_argument("--rows-per-file", type=int, default=2_097_152)
    p.add_argument("--row-group", type=int, default=131_072, help="Parquet row-group size (default 131,072)")
    p.add_argument("--rows-per-shard", type=int, default=1_048_576, help="store.rows_per_shard (default 1,048,576)")
    p.add_argument("--workers", type=int, default=2, help="threads / Dask worker processes (default 2)")
    p.add_argument("--torch-threads", type=int, default=1, help="torch threads per thread or worker (default 1)")
    p.add_argument("--teacher", choices=sorted(TEACHERS), default="cnn1d")
    p.add_argument("--modes", nargs="+", default=["threads", "dask"], choices=["threads", "dask"])
    p.add_argument(
        "--malloc-trim",
        action="store_true",
        help="keep distributed's MALLOC_TRIM_THRESHOLD_=65536 in the workers (kdflow unsets it: 2x slower scoring)",
    )
    p.add_argument("--s3", action="store_true", help="data and store on a moto S3 server on 127.0.0.1")
    p.add_argument("--work-dir", type=Path, default=None, help="kept afterwards (default: a temp dir, removed)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--_mode", dest="mode_spec", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mode_spec:
        print("RESULT " + json.dumps(run_mode(args.mode_spec)))
        return 0

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="kdflow-bench-dask-"))
    started = time.perf_counter()
    files = write_data(work / "data", args.rows, args.rows_per_file, args.row_group)
    write_seconds = time.perf_counter() - started
    server, endpoint, uri = None, None, str(work / "data")
    if args.s3:
        import os

        import boto3
        from moto.server import ThreadedMotoServer

        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            os.environ.setdefault(key, "testing")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        endpoint = f"http://127.0.0.1:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="bench")
        for f in files:
            s3.upload_file(str(f), "bench", f"data/{f.name}")
        uri = "s3://bench/data/"
    results = {}
    try:
        for mode in args.modes:
            root = f"s3://bench/store-{mode}" if args.s3 else str(work / f"store-{mode}")
            spec = {
                "mode": mode,
                "uri": uri,
                "endpoint": endpoint,
                "root": root,
                "rows_per_shard": args.rows_per_shard,
                "workers": args.workers,
                "torch_threads": args.torch_threads,
                "teacher": args.teacher,
                "malloc_trim": args.malloc_trim,
            }
            spec_path = work / f"spec-{mode}.json"
            spec_path.write_text(json.dumps(spec))
            load = load_avg()
            proc = subprocess.run(
                [sys.executable, __file__, "--_mode", str(spec_path)], capture_output=True, text=True, check=False
            )
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"mode {mode} failed (exit {proc.returncode})")
            results[mode] = {**json.loads(line[0][7:]), "load_avg_before": load}
    finally:
        if server is not None:
            server.stop()
        if args.work_dir is None:  # a temp dir of our own: 2.2 GB of Parquet at 10M rows
            shutil.rmtree(work, ignore_errors=True)
    shas = [r.pop("shard_sha256") for r in results.values()]
    payload = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "mode_spec"},
        "data_write_seconds": write_seconds,
        "identical_shards": all(s == shas[0] for s in shas),
        "load_avg_after": load_avg(),
        "modes": results,
    }
    for mode, r in results.items():
        workers = ", ".join(f"{v:.0f}" for v in r["worker_peak_mib"].values()) or "-"
        print(
            f"{mode:8s} {r['rows']:>11,} rows {r['shards']:>5} shards {r['seconds']:8.1f} s "
            f"{r['rows_per_second']:>11,.0f} rows/s  planner peak {r['planner_peak_mib']:7.0f} MiB  "
            f"worker peaks [{workers}] MiB  (load before {r['load_avg_before']})"
        )
    print(f"identical shards: {payload['identical_shards']}")
    if args.json:
        write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
