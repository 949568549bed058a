"""Promotions against a real MLflow server (mlflow/start-server.sh): PostgreSQL backend, artifacts on S3 (moto).

Several Prefect flow runs promote versions of one model at the same time; the global concurrency limit
``kdflow-promote-<name>`` must serialize them into one consistent champion history.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from kdflow import registry
from tests.conftest import (
    PG_HOST,
    PG_PORT,
    chain_is_consistent,
    drop_database,
    free_port,
    make_bucket,
    postgres_answers,
    stop_group,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SERVER_START_TIMEOUT_S = 240


def wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    """Poll ``/health`` until it answers OK; fail with the server log if the server exits or never answers."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after {SERVER_START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def mlflow_server(s3_endpoint, tmp_path_factory):
    """``mlflow/start-server.sh`` on a free port, a fresh PostgreSQL database and a fresh bucket on moto."""
    if not postgres_answers():
        reason = f"PostgreSQL does not answer on {PG_HOST}:{PG_PORT}: MLflow server test skipped"
        print(reason)
        pytest.skip(reason)
    suffix = uuid.uuid4().hex[:10]
    db, bucket, port = f"kdflow_test_{suffix}", make_bucket(s3_endpoint, f"kdflow-mlflow-{suffix}"), free_port()
    env = {
        **os.environ,
        "MLFLOW_BACKEND_STORE_URI": f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{db}",
        "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{bucket}/artifacts",
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "KDFLOW_MLFLOW_HOST": "127.0.0.1",
        "KDFLOW_MLFLOW_PORT": str(port),
        "KDFLOW_MLFLOW_WORKERS": "2",
    }
    log = tmp_path_factory.mktemp("mlflow-server") / "server.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        # Own session: the server's workers are stopped with it as one process group.
        proc = subprocess.Popen(
            ["bash", str(REPO / "mlflow" / "start-server.sh")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(url, proc, log)
        yield {"url": url, "bucket": bucket, "database": db, "endpoint": s3_endpoint}
    finally:
        stop_group(proc)
        drop_database(db)


def register_versions(name: str, count: int) -> list[str]:
    """Log one tiny model through the server (artifacts proxied to S3) and register ``count`` versions of it,
    each tagged SLA-passed (one upload, not ``count``: each costs seconds on a loaded 2-core machine)."""
    import mlflow

    with mlflow.start_run():
        model_uri, first = registry.log_torch_model(nn.Linear(4, 2), np.zeros((2, 4), np.float32), name)
    out = [first] + [str(mlflow.register_model(model_uri, name).version) for _ in range(count - 1)]
    for version in out:
        registry.tag_version(name, version, {"sla_passed": True})
    return out


def run_in_threads(target, args_list: list[tuple]) -> tuple[list, list]:
    """Start ``target(*args)`` for every args tuple at once (a barrier releases them together)."""
    start, results, errors = threading.Barrier(len(args_list)), [], []

    def call(*args):
        start.wait()
        try:
            results.append(target(*args))
        except Exception as exc:  # collected and asserted on by the caller
            errors.append((args, exc))

    threads = [threading.Thread(target=call, args=args) for args in args_list]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return results, errors


def test_concurrent_prefect_promotions_on_the_server_are_serialized(mlflow_server, prefect_harness):
    import boto3
    from prefect import flow

    from tasks.promotion import lock_name, promote_version, rollback_champion

    url = mlflow_server["url"]
    registry.configure(url, "kdflow-registry-server", None)
    name = "server-student"
    versions = register_versions(name, 5)
    assert versions == ["1", "2", "3", "4", "5"]
    keys = [
        o["Key"]
        for o in boto3.client("s3", endpoint_url=mlflow_server["endpoint"])
        .list_objects_v2(Bucket=mlflow_server["bucket"], Prefix="artifacts/")
        .get("Contents", [])
    ]
    assert any(k.endswith("/MLmodel") for k in keys), keys
    registry.promote(name, "1", "first champion", "server-test")

    @flow(name="promote-under-test")
    def promote_flow(version: str) -> dict:
        return promote_version(name, version, reason=f"promote {version}", actor="server-test", tracking_uri=url)

    # Five flow runs at once; version 3 twice (one of them is a no-op or a real move, depending on order).
    requested = ["2", "3", "4", "5", "3"]
    results, errors = run_in_threads(promote_flow, [(v,) for v in requested])
    assert errors == [] and len(results) == len(requested)

    events = registry.history(name, "champion")
    assert len(events) == 1 + len(requested)
    assert chain_is_consistent(events), [(e.previous, e.version) for e in events]
    flow_events = events[1:]
    assert sorted(e.key for e in flow_events) == sorted(r["event"] for r in results)  # each recorded once
    assert sorted(e.version for e in flow_events) == sorted(requested)
    assert len({e.flow_run for e in flow_events}) == len(requested) and all(e.flow_run for e in flow_events)
    assert all("flow promote-under-test" in e.actor and e.flow_run in e.actor for e in flow_events)
    assert registry.champion_version(name) == events[-1].version
    assert [m.champion for m in registry.list_models() if m.name == name] == [events[-1].version]

    @flow(name="rollback-under-test")
    def rollback_flow() -> dict:
        return rollback_champion(name, reason="regression", actor="server-test", tracking_uri=url)

    moves = [e for e in events if e.previous != e.version]
    rolled = rollback_flow()
    assert (rolled["previous"], rolled["version"]) == (moves[-1].version, moves[-1].previous)
    assert registry.champion_version(name) == moves[-1].previous

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(lock_name(name))
    assert limit.limit == 1 and limit.active_slots == 0


def test_unlocked_concurrent_promotions_can_break_the_chain(mlflow_server):
    """Without a lock, read-champion-then-move interleaves: the recorded ``previous`` chain breaks, or
    MLflow's alias upsert itself collides (a unique-key violation surfaced as an error).

    Shown to justify the lock above. Six promotions released together by a barrier; a round in which
    all six happen to run one after another keeps the chain, so up to five rounds are tried."""
    url = mlflow_server["url"]
    registry.configure(url, "kdflow-registry-server", None)
    name = "server-unlocked"
    broken_rounds = 0
    for _ in range(5):
        versions = register_versions(name, 6)
        start = registry.history(name, "champion")
        before = start[-1].version if start else None
        _, errors = run_in_threads(
            lambda v: registry.promote(name, v, "unlocked", "server-test"), [(v,) for v in versions]
        )
        if errors:  # MLflow's own alias upsert can collide too (UniqueViolation on PostgreSQL): also the race
            assert all("UniqueViolation" in str(e) or "unique" in str(e).lower() for _, e in errors), errors
            broken_rounds += 1
            break
        events = registry.history(name, "champion")[len(start) :]
        assert len(events) == len(versions)  # unique keys: no event lost even without a lock
        if not chain_is_consistent(events, before):
            broken_rounds += 1
            break
    assert broken_rounds == 1
