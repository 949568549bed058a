"""Fault tests for the logit store: a ``kdflow logits precompute`` killed by SIGKILL, transient S3 errors,
bad stores."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kdflow.config import DistillConfig, load_config
from kdflow.logits import LogitStore, LogitStoreError, store_key
from kdflow.store import StoreError, open_store
from tests.conftest import TINY_SIZES, TINY_TRANSFER, make_bucket, write_yaml
from tests.s3_proxy import FaultyS3Proxy

N, C, ROWS = 2000, 4, 250
META = dict(
    teacher_uri="models:/t@champion",
    teacher_name="t",
    teacher_version="1",
    data_fingerprint="a" * 64,
    dataset="transfer",
    rows_per_shard=ROWS,
)
KEY = store_key("t", "1", "a" * 64)


def teacher_logits(rows: slice) -> np.ndarray:
    """A deterministic stand-in teacher."""
    idx = np.arange(rows.start, rows.stop)
    return np.stack([np.sin(idx * (k + 1) * 0.01) * 5 for k in range(C)], axis=1).astype(np.float32)


class Counter:
    def __init__(self):
        self.rows = 0

    def __call__(self, rows: slice) -> np.ndarray:
        self.rows += rows.stop - rows.start
        return teacher_logits(rows)


REPO = Path(__file__).resolve().parents[1]
KDFLOW = Path(sys.executable).parent / "kdflow"
ROWS_KILL = 8
SUMMARY = re.compile(
    r"^  (\w+): (\S+) \((\d+) of (\d+) shards computed, (\d+) kept from an earlier run, (\d+) rows\)$", re.M
)


def cli_env() -> dict[str, str]:
    """The environment of a ``kdflow`` subprocess: this checkout first on the path, and the session's Prefect
    test API (so the child starts no ephemeral server of its own that a SIGKILL would orphan)."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    return env


def precompute_cli(config: Path, **kwargs) -> subprocess.Popen:
    """``kdflow logits precompute --config CONFIG`` as a real process in its own process group."""
    return subprocess.Popen(
        [str(KDFLOW), "logits", "precompute", "--config", str(config)],
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kwargs,
    )


def finish(proc: subprocess.Popen) -> dict[str, tuple[str, int, int, int, int]]:
    """Wait for a precompute command; per split: (store uri, shards computed, total, kept, rows computed)."""
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    found = {m[0]: (m[1], int(m[2]), int(m[3]), int(m[4]), int(m[5])) for m in SUMMARY.findall(out)}
    assert set(found) == {"train", "val", "test", "transfer"}, out
    return found


def shard_writes(store, backend: str, root: str, endpoint: str | None) -> dict[str, tuple]:
    """Per shard and marker object: what identifies that write (local: inode and mtime - the store replaces a
    file on every put; S3 with versioning: every version id), to tell kept objects from rewritten ones."""
    keys = [k for k in store.list("logits/") if "/shard-" in k]
    if backend == "local":
        stats = {k: (Path(root) / k).stat() for k in keys}
        return {k: ((st.st_ino, st.st_mtime_ns),) for k, st in stats.items()}
    import boto3

    bucket, prefix = root[len("s3://") :].split("/", 1)
    pages = (
        boto3.client("s3", endpoint_url=endpoint)
        .get_paginator("list_object_versions")
        .paginate(Bucket=bucket, Prefix=f"{prefix}/logits/")
    )
    versions: dict[str, list[str]] = {}
    for page in pages:
        for v in page.get("Versions", []):
            versions.setdefault(v["Key"][len(prefix) + 1 :], []).append(v["VersionId"])
    return {k: tuple(sorted(v)) for k, v in versions.items() if "/shard-" in k}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_killed_precompute_command_resumes_with_only_missing_shards(backend, distill_config, tmp_path, request):
    """SIGKILL a real ``kdflow logits precompute`` once some (not all) shards are stored, run the same command
    again: it computes exactly the missing shards, leaves the earlier ones untouched, and the stored logits
    equal an uninterrupted run's."""

    def store_cfg(name: str) -> dict:
        if backend == "local":
            return {"root": str(tmp_path / name)}
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = make_bucket(endpoint, f"kdflow-kill-{name}")
        import boto3

        boto3.client("s3", endpoint_url=endpoint).put_bucket_versioning(
            Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
        )  # every put becomes a version
        return {"root": f"s3://{bucket}/root", "endpoint_url": endpoint}

    # 2,400 rows in 8-row shards: 300 shard tasks (~10-20 per second here), so the kill lands mid-run
    configs = {}
    for name in ("killed", "reference"):
        distill_config["store"] = {**store_cfg(name), "rows_per_shard": ROWS_KILL, "workers": 2}
        configs[name] = write_yaml(tmp_path / f"{name}.yaml", distill_config)
    total = sum(-(-n // ROWS_KILL) for n in (*TINY_SIZES.values(), TINY_TRANSFER))
    cfg = load_config(configs["killed"], DistillConfig)
    store = open_store(cfg.store.root, endpoint_url=cfg.store.endpoint_url)

    proc = precompute_cli(configs["killed"])
    try:
        deadline = time.time() + 300
        while len([k for k in store.list("logits/") if k.endswith(".sha256")]) < 20:
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # its own group: the command and anything it started
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    listed = store.list("logits/")
    assert not [k for k in listed if k.endswith("manifest.json")]  # an interrupted store is never complete
    markers = {k for k in listed if k.endswith(".sha256")}
    kept = {k for m in markers for k in (m, m[: -len(".sha256")] + ".npz")}  # a marker is written after its shard
    orphans = {k for k in listed if k.endswith(".npz")} - kept  # shard stored, marker not yet: not trusted
    assert 20 <= len(markers) < total
    before = shard_writes(store, backend, cfg.store.root, cfg.store.endpoint_url)

    resumed = finish(precompute_cli(configs["killed"]))
    assert sum(s[1] for s in resumed.values()) == total - len(markers)  # only the missing shards ...
    assert sum(s[3] for s in resumed.values()) == len(markers)  # ... the rest kept
    assert all(s[2] == -(-TINY_SIZES.get(n, TINY_TRANSFER) // ROWS_KILL) for n, s in resumed.items())
    after = shard_writes(store, backend, cfg.store.root, cfg.store.endpoint_url)
    assert {k: after[k] for k in kept} == {k: before[k] for k in kept}  # untouched by the re-run
    assert len(after) == 2 * total
    rewritten = {k for k in after if k not in kept}
    assert orphans <= rewritten and all(after[k] != before.get(k) for k in rewritten)
    if backend == "s3":  # one new version per missing shard object: nothing was written twice
        assert sum(len(after[k]) - len(before.get(k, ())) for k in rewritten) == len(rewritten)

    reference = finish(precompute_cli(configs["reference"]))
    assert all(s[1] == s[2] and s[3] == 0 for s in reference.values())
    ref_cfg = load_config(configs["reference"], DistillConfig)
    ref_store = open_store(ref_cfg.store.root, endpoint_url=ref_cfg.store.endpoint_url)
    for split, (uri, *_) in resumed.items():
        key = uri.split("/logits/", 1)[1]
        assert reference[split][0].endswith(key)  # same teacher, data and settings: same key
        got, want = LogitStore(store, f"logits/{key}"), LogitStore(ref_store, f"logits/{key}")
        m_got, m_want = got.require_manifest(), want.require_manifest()
        assert (m_got.num_rows, m_got.clipped_values, len(m_got.shards)) == (
            m_want.num_rows,
            m_want.clipped_values,
            len(m_want.shards),
        )
        for (ids_a, z_a), (ids_b, z_b) in zip(got.iter_shards(m_got), want.iter_shards(m_want), strict=True):
            assert np.array_equal(ids_a, ids_b) and z_a.dtype == z_b.dtype == np.float16
            assert z_a.tobytes() == z_b.tobytes()  # identical stored fp16 values, bit for bit


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
def test_distill_with_wrong_store_credentials_trains_and_registers_nothing(
    distill_config, tmp_path, s3_endpoint, iam_enforced
):
    from flows.distill import distill_flow
    from mlflow import MlflowClient
    from tests.conftest import write_yaml

    distill_config["store"] = {"root": f"s3://{iam_enforced}/store", "endpoint_url": s3_endpoint}
    with pytest.raises(StoreError, match=f"s3://{iam_enforced}/store.*credentials were rejected"):
        distill_flow(str(write_yaml(tmp_path / "d.yaml", distill_config)))
    name = distill_config["registry"]["student_name"]
    assert MlflowClient().search_model_versions(f"name='{name}'") == []
    # the flow's first step (the output preflight) stopped it: no MLflow run was even started
    experiment = MlflowClient().get_experiment_by_name(distill_config["registry"].get("experiment", "kdflow"))
    assert (
        experiment is None
        or MlflowClient().search_runs([experiment.experiment_id], f"params.`registry.student_name` = '{name}'") == []
    )
