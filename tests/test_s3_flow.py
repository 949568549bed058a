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
    assert all(uri.startswith(f"s3://{bucket}/store/logits/") for uri in remote["provenance"]["logit_store_keys"].values())

    run = MlflowClient().get_run(remote["run_id"])
    assert run.info.artifact_uri.startswith(f"s3://{bucket}/mlflow/")
    mlflow_keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="mlflow/")["Contents"]]
    assert any(k.endswith("report/report.json") for k in mlflow_keys)
    assert any(k.endswith("plots/reliability_diagram.png") for k in mlflow_keys)
    assert remote["registration"]["version"] == "1"
