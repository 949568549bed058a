"""Fault tests for the logit store: a precomputation killed by a signal, transient S3 errors, bad stores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from kdflow.logits import LogitStore, LogitStoreError, store_key
from kdflow.store import StoreError, open_store
from tests.conftest import make_bucket
from tests.s3_proxy import FaultyS3Proxy

N, C, ROWS = 2000, 4, 250
META = dict(teacher_uri="models:/t@champion", teacher_name="t", teacher_version="1", data_fingerprint="a" * 64,
            dataset="transfer", rows_per_shard=ROWS)
KEY = store_key("t", "1", "a" * 64)


def teacher_logits(rows: slice) -> np.ndarray:
    """A deterministic stand-in teacher (same in the child process and here)."""
    idx = np.arange(rows.start, rows.stop)
    return np.stack([np.sin(idx * (k + 1) * 0.01) * 5 for k in range(C)], axis=1).astype(np.float32)


CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from kdflow.logits import LogitStore
    from kdflow.store import open_store
    from tests.test_logit_faults import KEY, META, N, teacher_logits

    def slow_teacher(rows):
        time.sleep(0.4)  # one shard every 0.4 s: the parent kills us midway
        print("shard", rows.start, flush=True)
        return teacher_logits(rows)

    LogitStore(open_store(sys.argv[1], endpoint_url=sys.argv[2] or None), KEY).precompute(
        np.arange(N), slow_teacher, **META)
    print("finished", flush=True)
""")


class Counter:
    def __init__(self):
        self.rows = 0

    def __call__(self, rows: slice) -> np.ndarray:
        self.rows += rows.stop - rows.start
        return teacher_logits(rows)


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_killed_precomputation_resumes_with_only_missing_shards(backend, tmp_path, request):
    endpoint = ""
    root = str(tmp_path / "store")
    if backend == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        root = f"s3://{make_bucket(endpoint, 'kdflow-kill')}/root"
    store = open_store(root, endpoint_url=endpoint or None)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, root, endpoint], stdout=subprocess.PIPE, text=True,
                            cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()})
    started = 0
    deadline = time.time() + 60
    while started < 3 and time.time() < deadline:  # wait until at least 3 shards were handed to the teacher
        line = proc.stdout.readline()
        started += line.startswith("shard")
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    ls = LogitStore(store, KEY)
    assert ls.manifest() is None  # never trusted as complete
    done = len([k for k in store.list(KEY) if k.endswith(".sha256")])
    assert 2 <= done < N // ROWS
    counter = Counter()
    stats = ls.precompute(np.arange(N), counter, **META)
    assert counter.rows == N - done * ROWS and stats.shards_computed == N // ROWS - done
    expected = teacher_logits(slice(0, N)).astype(np.float16).astype(np.float32)
    assert np.array_equal(ls.read_aligned(np.arange(N), "1", "a" * 64), expected)


@pytest.mark.parametrize("status", [503, 500])
def test_transient_s3_errors_are_retried(status, s3_endpoint):
    bucket = make_bucket(s3_endpoint, f"kdflow-flaky-{status}")
    with FaultyS3Proxy(s3_endpoint, failures=6, status=status) as proxy:
        ls = LogitStore(open_store(f"s3://{bucket}/root", endpoint_url=proxy.url), KEY)
        ls.precompute(np.arange(N), Counter(), **META)
        back = ls.read_aligned(np.arange(N), "1", "a" * 64)
    assert proxy.injected == 6 and proxy.forwarded > 0
    assert np.array_equal(back, teacher_logits(slice(0, N)).astype(np.float16).astype(np.float32))


def test_persistent_s3_errors_fail_clearly(s3_endpoint):
    bucket = make_bucket(s3_endpoint, "kdflow-down")
    with FaultyS3Proxy(s3_endpoint, failures=10_000, status=503) as proxy:
        store = open_store(f"s3://{bucket}/root", endpoint_url=proxy.url)
        with pytest.raises(StoreError, match=f"s3://{bucket}/root/.*SlowDown"):
            store.put("x", b"1")


def test_corrupt_s3_shard_is_named(s3_endpoint):
    import boto3

    bucket = make_bucket(s3_endpoint, "kdflow-corrupt")
    ls = LogitStore(open_store(f"s3://{bucket}/root", endpoint_url=s3_endpoint), KEY)
    ls.precompute(np.arange(N), Counter(), **META)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    key = f"root/{KEY}/shard-00003.npz"
    raw = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    raw[100] ^= 0x01
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(raw))
    with pytest.raises(LogitStoreError, match="shard-00003.npz failed its SHA-256 check"):
        ls.read_aligned(np.arange(N), "1", "a" * 64)


def test_missing_bucket_names_the_store(s3_endpoint):
    ls = LogitStore(open_store("s3://kdflow-nonexistent/root", endpoint_url=s3_endpoint), KEY)
    with pytest.raises(StoreError, match="kdflow-nonexistent.*NoSuchBucket"):
        ls.precompute(np.arange(N), Counter(), **META)


@pytest.fixture()
def iam_enforced(s3_endpoint, monkeypatch):
    """moto checks signatures against its IAM only inside ``enable_iam_authentication`` (same process as the
    threaded server); the default test credentials are then unknown keys — i.e. wrong credentials."""
    from moto.core.authorization import enable_iam_authentication

    bucket = make_bucket(s3_endpoint, "kdflow-locked")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with enable_iam_authentication():
        yield bucket


def test_wrong_credentials_name_the_store_and_the_problem(s3_endpoint, iam_enforced):
    ls = LogitStore(open_store(f"s3://{iam_enforced}/root", endpoint_url=s3_endpoint), KEY)
    teacher = Counter()
    with pytest.raises(StoreError, match=f"s3://{iam_enforced}/root/.*credentials were rejected"):
        ls.precompute(np.arange(N), teacher, **META)
    assert teacher.rows == 0  # refused before the teacher ran on anything


@pytest.mark.slow
def test_distill_with_wrong_store_credentials_trains_and_registers_nothing(distill_config, tmp_path, s3_endpoint,
                                                                           iam_enforced):
    from mlflow import MlflowClient

    from flows.distill import distill_flow
    from tests.conftest import write_yaml

    distill_config["store"] = {"root": f"s3://{iam_enforced}/store", "endpoint_url": s3_endpoint}
    with pytest.raises(StoreError, match=f"s3://{iam_enforced}/store.*credentials were rejected"):
        distill_flow(str(write_yaml(tmp_path / "d.yaml", distill_config)))
    name = distill_config["registry"]["student_name"]
    assert MlflowClient().search_model_versions(f"name='{name}'") == []
    # the flow's first step (the output preflight) stopped it: no MLflow run was even started
    experiment = MlflowClient().get_experiment_by_name(distill_config["registry"].get("experiment", "kdflow"))
    assert experiment is None or MlflowClient().search_runs(
        [experiment.experiment_id], f"params.`registry.student_name` = '{name}'") == []
