"""Streamed training input from remote storage (a benchmark script, not a test): does the training step wait on
S3 (issue 15, item 4)?

A student (a 2x128 MLP) is distilled for ``--epochs`` epochs by :func:`kdflow.train.fit` from a
:class:`kdflow.stream.StreamingSource` over ``--rows`` synthetic rows of the MNIST-1D shape (n, 40), 10 classes,
in one Parquet file of ``--row-group``-row row groups, with teacher logits in ``--row-group``-row shards. Four
ways, each in a fresh interpreter:

* ``local``: file and logit store on local disk, read when due (``prefetch 0``) or read ahead;
* ``s3``: file and logit store on a moto S3 server on 127.0.0.1, reached through a proxy that adds
  ``--latency`` seconds to every request (what a remote store costs that a loopback server does not; the proxy
  is ``tests/s3_proxy.py``), read when due or read ahead by ``train.prefetch_readers`` threads.

Per mode: the median over epochs 2.. of ``epoch_seconds`` and ``input_wait_seconds`` (the time the training
loop spent waiting for its next batch, measured by ``fit``), rows/s, the process's peak memory (``VmHWM``), the
files written to an empty ``TMPDIR`` (the stream must not copy anything to disk), a SHA-256 of every batch the
loop was given (every mode must give the same batches: the exit status is 1 otherwise) and one of the trained
weights (reported; CPU kernels may round differently from one process to the next, so it is not the check).
moto runs in this process; each mode in its own.

Run (from the repository root)::

    .venv/bin/python bench/stream.py --json bench/results/stream.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(ROOT))
from _common import cpu_model, load_avg, vmhwm_mib, write_json  # noqa: E402

FEATURES, CLASSES, FINGERPRINT = 40, 10, "b" * 64
MODES = [("local", 0), ("local", 2), ("s3", 0), ("s3", 2)]


def run_mode(spec: dict[str, Any]) -> dict[str, Any]:
    """Train the student from the stream ``spec`` describes; its timings, memory and weights' digest."""
    import torch

    from kdflow.config import DataConfig, TrainConfig
    from kdflow.logits import LogitStore
    from kdflow.models import build_model
    from kdflow.store import open_store
    from kdflow.stream import StreamingSource
    from kdflow.train import fit

    data = DataConfig(train=spec["uri"], val="-", test="-", num_classes=CLASSES)
    store = LogitStore(open_store(spec["store_root"], spec["endpoint"]), spec["store_key"])
    cfg = TrainConfig(
        epochs=spec["epochs"],
        batch_size=spec["batch_size"],
        early_stopping_patience=None,
        prefetch_buffers=spec["prefetch"],
        prefetch_readers=spec["readers"],
        num_threads=spec["threads"],
    )
    source = StreamingSource(
        [("train", spec["uri"], store, True)],
        data,
        "1",
        {"train": FINGERPRINT},
        spec["endpoint"],
        prefetch=cfg.prefetch_buffers,
        readers=cfg.prefetch_readers,
    )
    rng = np.random.default_rng(1)
    x_val = rng.normal(size=(2048, FEATURES)).astype(np.float32)
    y_val = rng.integers(0, CLASSES, size=2048)
    torch.manual_seed(0)
    model = build_model("mlp", {"width": 128, "depth": 2}, (FEATURES,), CLASSES)
    batches = _HashedBatches(source)
    result = fit(model, batches, x_val, y_val, cfg, progress=False)
    source.close()
    later = result.history[1:] or result.history
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.state_dict().values()))
    epoch = statistics.median(m["epoch_seconds"] for m in later)
    return {
        "epoch_seconds": epoch,
        "input_wait_seconds": statistics.median(m["input_wait_seconds"] for m in later),
        "rows_per_second": len(source) / epoch,
        "epochs": [{k: m[k] for k in ("epoch", "epoch_seconds", "input_wait_seconds")} for m in result.history],
        "peak_mib": vmhwm_mib(),
        "weights_sha256": digest.hexdigest(),
        "batches_sha256": batches.digest.hexdigest(),
    }


class _HashedBatches:
    """``source`` as ``fit`` sees it, hashing every batch it yields (features, labels, logits) in order."""

    def __init__(self, source: Any):
        self.source, self.digest = source, hashlib.sha256()

    def __len__(self) -> int:
        return len(self.source)

    def batches(self, batch_size: int, generator: Any):  # noqa: ANN201 - an iterator of tensor tuples
        for batch in self.source.batches(batch_size, generator):
            for tensor in batch:
                self.digest.update(tensor.numpy().tobytes())
            yield batch


def write_inputs(work: Path, rows: int, row_group: int) -> tuple[Path, np.ndarray, np.ndarray]:
    """The Parquet file and the teacher's logits (a fixed random linear map of the features)."""
    from kdflow.data import to_frame, write_parquet

    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    z = x @ rng.normal(size=(FEATURES, CLASSES)).astype(np.float32)
    y = z.argmax(1)
    ids = np.arange(rows)
    return write_parquet(to_frame(ids, x, y), work / "train.parquet", row_group_size=row_group), ids, z


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=262_144)
    p.add_argument("--row-group", type=int, default=8192)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--latency", type=float, default=0.05, help="seconds the proxy adds to each S3 request")
    p.add_argument("--readers", type=int, default=4, help="train.prefetch_readers")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", type=Path)
    p.add_argument("--run", type=Path, help=argparse.SUPPRESS)  # one mode, in a fresh interpreter
    args = p.parse_args(argv)
    if args.run:
        print(json.dumps(run_mode(json.loads(args.run.read_text()))))
        return 0

    import boto3
    from moto.server import ThreadedMotoServer

    from kdflow.logits import LogitStore, store_key
    from kdflow.store import LocalStore, open_store
    from tests.conftest import free_port
    from tests.s3_proxy import FaultyS3Proxy

    for key, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    started = dt.datetime.now(dt.timezone.utc)
    load_before = load_avg()
    with tempfile.TemporaryDirectory(prefix="kdflow-bench-stream-") as tmp:
        work = Path(tmp)
        path, ids, z = write_inputs(work, args.rows, args.row_group)
        port = free_port()
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        moto.start()
        endpoint = f"http://127.0.0.1:{port}"
        key = store_key("bench", "1", FINGERPRINT)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="kdflow-bench")
        boto3.client("s3", endpoint_url=endpoint).upload_file(str(path), "kdflow-bench", "data/train.parquet")
        meta = dict(teacher_uri="bench", teacher_name="bench", teacher_version="1", data_fingerprint=FINGERPRINT)
        for root, store in (
            (str(work / "store"), LocalStore(work / "store")),
            ("s3://kdflow-bench/store", open_store("s3://kdflow-bench/store", endpoint)),
        ):
            LogitStore(store, key).precompute(
                ids, lambda rows: z[rows], dataset="train", rows_per_shard=args.row_group, **meta
            )
        results = []
        with FaultyS3Proxy(endpoint, failures=0, latency_s=args.latency) as proxy:
            for where, prefetch in MODES:
                remote = where == "s3"
                spec = {
                    "uri": "s3://kdflow-bench/data/train.parquet" if remote else str(path),
                    "store_root": "s3://kdflow-bench/store" if remote else str(work / "store"),
                    "endpoint": proxy.url if remote else None,
                    "store_key": key,
                    "prefetch": prefetch,
                    "readers": args.readers,
                    "epochs": args.epochs,
                    "batch_size": args.batch_size,
                    "threads": args.threads,
                }
                spec_path = work / f"{where}-{prefetch}.json"
                spec_path.write_text(json.dumps(spec))
                scratch = work / f"tmp-{where}-{prefetch}"
                scratch.mkdir()
                requests_before = proxy.forwarded
                out = subprocess.run(
                    [sys.executable, __file__, "--run", str(spec_path)],
                    env={**os.environ, "TMPDIR": str(scratch)},
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=ROOT,
                )
                row = {"storage": where, "prefetch_buffers": prefetch, **json.loads(out.stdout.splitlines()[-1])}
                row["requests"] = proxy.forwarded - requests_before
                row["files_left_in_tmpdir"] = sorted(
                    str(f.relative_to(scratch)) for f in scratch.rglob("*") if f.is_file()
                )
                results.append(row)
                print(
                    f"{where:5s} prefetch {prefetch}: epoch {row['epoch_seconds']:.2f} s, waiting on input "
                    f"{row['input_wait_seconds']:.2f} s, {row['rows_per_second']:,.0f} rows/s, "
                    f"peak {row['peak_mib']:.0f} MiB, {row['requests']} S3 requests, "
                    f"in TMPDIR: {row['files_left_in_tmpdir']}"
                )
        moto.stop()
    digests = {r["batches_sha256"] for r in results}
    weights = {r["weights_sha256"] for r in results}
    print("every mode gave the same batches" if len(digests) == 1 else f"batches differ: {digests}")
    print("and trained the same student" if len(weights) == 1 else f"trained weights differ: {weights}")
    payload = {
        "benchmark": "stream",
        "command": "python bench/stream.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": started.isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "load_before": load_before, "load_after": load_avg()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "run")},
        "identical_batches": len(digests) == 1,
        "identical_students": len(weights) == 1,
        "results": results,
    }
    if args.json:
        write_json(args.json, payload)
    return 0 if len(digests) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
