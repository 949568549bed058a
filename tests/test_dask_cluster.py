"""Precompute on an existing Dask cluster (``store.cluster_address``): a real ``distributed.LocalCluster`` of two
worker processes, data and logit store on moto's S3 server over HTTP; the workers read their shards' rows from
the Parquet row groups (ranged GETs) and write the shards themselves."""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from kdflow.config import DataConfig, StoreConfig
from kdflow.data import DataError, to_frame, write_parquet
from kdflow.rowgroups import _RangeFile, read_rows, shard_source, split_layout
from kdflow.store import open_store
from tests.conftest import make_bucket, write_yaml


def test_store_config_takes_a_cluster_address_and_bounds_the_shard_size():
    assert StoreConfig(task_runner="dask", cluster_address="tcp://127.0.0.1:8786").cluster_address.startswith("tcp")
    assert StoreConfig(rows_per_shard=4_000_000).rows_per_shard == 4_000_000  # millions of rows per shard
    with pytest.raises(ValidationError, match="rows_per_shard"):
        StoreConfig(rows_per_shard=20_000_000)
    with pytest.raises(ValidationError, match="cluster_adress"):
        StoreConfig(cluster_adress="tcp://127.0.0.1:8786")  # strict: a misspelt key is an error


def test_worker_resources_annotate_the_shard_tasks_under_dask_only():
    import dask

    from tasks.logits import shard_resources

    assert StoreConfig().worker_resources == {} and StoreConfig(worker_resources={"GPU": 1}).worker_resources == {
        "GPU": 1
    }
    with pytest.raises(ValidationError, match="worker_resources"):
        StoreConfig(worker_resources={"GPU": "one"})
    for store in (StoreConfig(worker_resources={"GPU": 1}), StoreConfig(task_runner="dask")):
        with shard_resources(store):  # threads, or dask without resources: nothing to annotate
            assert dask.get_annotations() == {}
    with shard_resources(StoreConfig(task_runner="dask", worker_resources={"GPU": 1})):
        assert dask.get_annotations() == {"resources": {"GPU": 1}}


def test_rows_are_read_from_s3_row_groups_without_a_full_copy(s3_endpoint, tmp_path):
    """Shard rows crossing files and partial row groups read by ranged GETs equal the in-memory split; reading one
    row group fetches a fraction of the file."""
    bucket = make_bucket(s3_endpoint, "kdflow-rowgroups")
    rng = np.random.default_rng(0)
    ids, x = np.arange(1000, 1700), rng.normal(size=(700, 40)).astype(np.float32)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for name, rows in (("a", slice(0, 450)), ("b", slice(450, 700))):
        path = write_parquet(to_frame(ids[rows], x[rows]), tmp_path / f"{name}.parquet", row_group_size=100)
        s3.upload_file(str(path), bucket, f"split/{name}.parquet")
    data = DataConfig(train="unused", val="unused", test="unused", num_classes=10)
    layout = split_layout(f"s3://{bucket}/split/", s3_endpoint)
    assert layout == [(f"s3://{bucket}/split/a.parquet", 450), (f"s3://{bucket}/split/b.parquet", 250)]
    for start, stop in ((0, 100), (130, 420), (400, 520), (449, 451), (600, 700)):
        got_ids, got_x = read_rows(shard_source(layout, start, stop, s3_endpoint, ids), data)
        np.testing.assert_array_equal(got_ids, ids[start:stop])
        np.testing.assert_array_equal(got_x, x[start:stop])

    big = rng.normal(size=(20_000, 40)).astype(np.float32)
    path = write_parquet(to_frame(np.arange(20_000), big), tmp_path / "big.parquet", row_group_size=1000)
    s3.upload_file(str(path), bucket, "big/big.parquet")
    raw = _RangeFile(open_store(f"s3://{bucket}/big", s3_endpoint), "big.parquet")
    table = pq.ParquetFile(io.BufferedReader(raw, 1 << 16)).read_row_group(7)
    np.testing.assert_array_equal(np.stack(table.column("x").to_numpy(zero_copy_only=False)), big[7000:8000])
    assert 0 < raw.bytes_read < raw.length / 5, (raw.bytes_read, raw.length)  # one of 20 row groups + footer

    changed = shard_source(layout, 0, 100, s3_endpoint, ids + 1)  # the planner saw other ids
    with pytest.raises(DataError, match="the data changed after it was validated"):
        read_rows(changed, data)


@pytest.fixture()
def dask_cluster(s3_endpoint):
    """A real two-process LocalCluster (started after moto's credentials are in the environment)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        with distributed.Client(cluster) as client:
            yield cluster, client


@pytest.mark.slow
def test_precompute_on_an_existing_cluster_matches_threads(
    distill_config, tmp_path, tiny_data, s3_endpoint, dask_cluster
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.logits import precompute_flow
    from kdflow.logits import LogitStore
    from tasks.logits import task_runner_for

    cluster, client = dask_cluster
    bucket = make_bucket(s3_endpoint, "kdflow-dask")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for split, path in tiny_data.items():
        s3.upload_file(str(path), bucket, f"data/{split}.parquet")
    distill_config["data"].update({split: f"s3://{bucket}/data/{split}.parquet" for split in tiny_data})

    task_names: dict[str, list[str]] = {}

    def run(store: dict, name: str, out_of_core: bool = False) -> dict:
        cfg = copy.deepcopy(distill_config)
        cfg["data"]["out_of_core"] = out_of_core
        cfg["store"] = {"endpoint_url": s3_endpoint, "rows_per_shard": 256, **store}
        runner = task_runner_for(StoreConfig(**cfg["store"]))
        flow = precompute_flow.with_options(task_runner=runner)
        state = flow(str(write_yaml(tmp_path / f"{name}.yaml", cfg)), return_state=True)
        with get_client(sync_client=True) as prefect:
            runs = prefect.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            )
        task_names[name] = sorted(t.name.rsplit("-", 1)[0] for t in runs)
        return state.result()

    address = cluster.scheduler_address
    on_cluster = run(
        {"root": f"s3://{bucket}/dask-store", "task_runner": "dask", "cluster_address": address}, "cluster"
    )
    threads = run({"root": f"s3://{bucket}/thread-store", "task_runner": "threads"}, "threads")
    # data.out_of_core on the cluster: the flow validates chunk by chunk and holds no split; same stores
    ooc = run(
        {"root": f"s3://{bucket}/ooc-store", "task_runner": "dask", "cluster_address": address}, "ooc", out_of_core=True
    )
    assert "validate-inputs-out-of-core" in task_names["ooc"]
    assert task_names["ooc"].count("compute-logit-shard-from-parquet") == 12, task_names["ooc"]
    assert (
        on_cluster["stats"]["transfer"]["shards_total"] == 5
        and on_cluster["stats"]["transfer"]["rows_computed"] == 1200
    )
    # each worker reports the device it scored on: here every worker's is the CPU (device: auto, no GPU)
    assert {split: st["scored_on"] for split, st in on_cluster["stats"].items()} == {
        "train": {"cpu": 3},
        "val": {"cpu": 2},
        "test": {"cpu": 2},
        "transfer": {"cpu": 5},
    }

    # 12 shards (train 3, val 2, test 2, transfer 5): on the cluster each read its rows from Parquet on the worker
    assert task_names["cluster"].count("compute-logit-shard-from-parquet") == 12, task_names["cluster"]
    assert "compute-logit-shard" not in task_names["cluster"]
    assert task_names["threads"].count("compute-logit-shard") == 12, task_names["threads"]
    for split, uri in on_cluster["stores"].items():
        key = uri.split("/dask-store/", 1)[1]
        assert threads["stores"][split].endswith(key)  # same teacher and data: the same store key
        assert ooc["stores"][split].endswith(key)  # out of core: the same fingerprint, hence the same key
        a = LogitStore(open_store(f"s3://{bucket}/dask-store", s3_endpoint), key)
        b = LogitStore(open_store(f"s3://{bucket}/thread-store", s3_endpoint), key)
        c = LogitStore(open_store(f"s3://{bucket}/ooc-store", s3_endpoint), key)
        ids = pd.read_parquet(tiny_data[split])["id"].to_numpy()
        fp = a.require_manifest().data_fingerprint
        version = a.require_manifest().teacher_version
        np.testing.assert_array_equal(a.read_aligned(ids, version, fp), b.read_aligned(ids, version, fp))
        np.testing.assert_array_equal(a.read_aligned(ids, version, fp), c.read_aligned(ids, version, fp))

    def worker_did(dask_worker) -> tuple[int, bool, int]:  # runs in each worker process
        import sys

        loaded = sys.modules.get("tasks.logits")
        models = loaded._teacher_model.cache_info().currsize if loaded else 0
        return dask_worker.state.transition_counter, "kdflow.rowgroups" in sys.modules, models

    per_worker = client.run(worker_did)
    assert len(per_worker) == 2
    for worker, (transitions, read_rows_here, models) in per_worker.items():
        assert transitions > 0 and read_rows_here and models == 1, (worker, per_worker)


@pytest.mark.slow
def test_worker_resources_send_every_shard_to_the_workers_that_have_them(
    distill_config, tmp_path, tiny_data, s3_endpoint, dask_cluster
):
    """Two plain workers and a third started the way a GPU worker is (`dask worker ADDRESS --resources GPU=1`; on
    this machine without a GPU the resource is only the label the scheduler matches): with
    ``store.worker_resources: {GPU: 1}`` every shard task runs on the third, and the plain ones load no teacher."""
    from flows.logits import precompute_flow
    from tasks.logits import task_runner_for
    from tests.conftest import stop_group

    cluster, client = dask_cluster
    bucket = make_bucket(s3_endpoint, "kdflow-dask-resources")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for split, path in tiny_data.items():
        s3.upload_file(str(path), bucket, f"data/{split}.parquet")
    cfg = copy.deepcopy(distill_config)
    cfg["data"].update({split: f"s3://{bucket}/data/{split}.parquet" for split in tiny_data})
    address = cluster.scheduler_address
    cfg["store"] = {
        "root": f"s3://{bucket}/store",
        "endpoint_url": s3_endpoint,
        "rows_per_shard": 256,
        "task_runner": "dask",
        "cluster_address": address,
        "worker_resources": {"GPU": 1},
    }
    root = Path(__file__).resolve().parents[1]
    worker = subprocess.Popen(
        [str(Path(sys.executable).parent / "dask"), "worker", address, "--nworkers", "1", "--nthreads", "1",
         "--resources", "GPU=1", "--no-dashboard", "--host", "127.0.0.1"],
        env={**os.environ, "PYTHONPATH": str(root)},
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        client.wait_for_workers(3, timeout=120)
        flow = precompute_flow.with_options(task_runner=task_runner_for(StoreConfig(**cfg["store"])))
        out = flow(str(write_yaml(tmp_path / "resources.yaml", cfg)))
        assert sum(n for st in out["stats"].values() for n in st["scored_on"].values()) == 12

        def teachers_loaded(dask_worker) -> int:  # runs in each worker process
            import sys

            loaded = sys.modules.get("tasks.logits")
            return loaded._teacher_model.cache_info().currsize if loaded else 0

        loaded = client.run(teachers_loaded)
        workers = client.scheduler_info()["workers"]
        labelled = [addr for addr, info in workers.items() if info.get("resources", {}).get("GPU")]
        assert len(labelled) == 1 and len(loaded) == 3
        assert {addr: n for addr, n in loaded.items()} == {addr: int(addr in labelled) for addr in loaded}
    finally:
        stop_group(worker)
