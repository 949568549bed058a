"""The distill flow with data, teacher logits and MLflow artifacts on S3 over real HTTP (moto on 127.0.0.1),
compared with the same run on local directories."""

from __future__ import annotations

import copy

import boto3
import pytest

from mlflow import MlflowClient
from tests.conftest import make_bucket, write_yaml

pytestmark = pytest.mark.slow


def test_distill_on_s3_matches_local(distill_config, tmp_path, tiny_data, s3_endpoint, monkeypatch):
    from flows.distill import distill_flow

    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_endpoint)
    bucket = make_bucket(s3_endpoint, "kdflow-e2e")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for split, path in tiny_data.items():
        s3.upload_file(str(path), bucket, f"data/{split}.parquet")

    local_cfg = copy.deepcopy(distill_config)
    local_cfg["store"]["root"] = str(tmp_path / "local-store")
    local = distill_flow(str(write_yaml(tmp_path / "local.yaml", local_cfg)))

    s3_cfg = copy.deepcopy(distill_config)
    s3_cfg["data"].update({split: f"s3://{bucket}/data/{split}.parquet" for split in tiny_data})
    s3_cfg["store"] = {"root": f"s3://{bucket}/store", "endpoint_url": s3_endpoint, "rows_per_shard": 512}
    s3_cfg["registry"].update(experiment="kdflow-s3", student_name=distill_config["registry"]["student_name"] + "-s3")
    s3_cfg["mlflow"]["artifact_location"] = f"s3://{bucket}/mlflow"
    remote = distill_flow(str(write_yaml(tmp_path / "s3.yaml", s3_cfg)))

    # Same data content, same teacher version -> same store keys, same training, same results.
    assert remote["provenance"]["data_fingerprints"] == local["provenance"]["data_fingerprints"]
    for key in ("student_accuracy", "teacher_accuracy", "flip_rate", "student_ece"):
        assert remote["evaluation"][key] == pytest.approx(local["evaluation"][key], abs=1e-9), key
    assert remote["calibration"]["temperature"] == pytest.approx(local["calibration"]["temperature"], rel=1e-6)

    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="store/logits/")["Contents"]]
    assert sum(k.endswith("manifest.json") for k in keys) == 4 and any(k.endswith(".npz") for k in keys)
    assert all(
        uri.startswith(f"s3://{bucket}/store/logits/") for uri in remote["provenance"]["logit_store_keys"].values()
    )

    run = MlflowClient().get_run(remote["run_id"])
    assert run.info.artifact_uri.startswith(f"s3://{bucket}/mlflow/")
    mlflow_keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="mlflow/")["Contents"]]
    assert any(k.endswith("report/report.json") for k in mlflow_keys)
    assert any(k.endswith("plots/reliability_diagram.png") for k in mlflow_keys)
    assert remote["registration"]["version"] == "1"


def test_cli_distill_with_a_missing_store_bucket_exits_2_before_any_compute(
    distill_config, tmp_path, s3_endpoint, monkeypatch
):
    """A fresh machine's first run with a store bucket nobody created: one line naming the bucket, exit 2, in
    seconds; one S3 request (the probe, not retried); no validation, no teacher logits, no MLflow run or model."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort
    from typer.testing import CliRunner

    from app.cli import app
    from tests.s3_proxy import FaultyS3Proxy

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    with FaultyS3Proxy(s3_endpoint, failures=0) as proxy:  # forwards every request to moto, counting them
        distill_config["store"] = {"root": "s3://kdflow-never-created/store", "endpoint_url": proxy.url}
        path = write_yaml(tmp_path / "missing-bucket.yaml", distill_config)
        start = time.perf_counter()
        result = CliRunner().invoke(app, ["distill", "--config", str(path)])
        seconds = time.perf_counter() - start
    assert result.exit_code == 2, result.output
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == [
        "error: 1 output location(s) not writable; stopped before any compute: store.root "
        f"s3://kdflow-never-created/store: bucket 'kdflow-never-created' does not exist at {proxy.url} (NoSuchBucket)"
    ]
    assert seconds < 20, seconds
    assert proxy.forwarded == 1  # the probe's PUT, attempted once

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    assert "kdflow-never-created" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    name = distill_config["registry"]["student_name"]
    assert MlflowClient().search_model_versions(f"name='{name}'") == []
    experiment = MlflowClient().get_experiment_by_name(distill_config["registry"].get("experiment", "kdflow"))
    assert (
        experiment is None
        or MlflowClient().search_runs([experiment.experiment_id], f"params.`registry.student_name` = '{name}'") == []
    )  # no run was even started
    with get_client(sync_client=True) as client:
        [run] = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["distill"])), sort=FlowRunSort.START_TIME_DESC, limit=1
        )
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    assert run.state.is_failed()
    assert [(t.name.rsplit("-", 1)[0], t.run_count) for t in tasks] == [("check-outputs-writable", 1)]
