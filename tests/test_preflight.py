"""Fail before compute: every output location is probed for writing first, and one error lists each that is not.

S3 is moto's server over real HTTP; credentials are checked by moto's IAM simulation (``enable_iam_authentication``,
same process as the threaded server)."""

from __future__ import annotations

import os
import sys

import boto3
import pytest

from kdflow.preflight import Location, PreflightError, check_writable, output_locations, probe
from kdflow.store import PermanentStoreError, StoreError, open_store
from tests.conftest import make_bucket


def s3_keys(endpoint: str, bucket: str) -> list[str]:
    return [
        o["Key"] for o in boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=bucket).get("Contents", [])
    ]


def test_writable_locations_pass_and_keep_nothing(tmp_path, s3_endpoint):
    bucket = make_bucket(s3_endpoint, "kdflow-preflight-ok")
    existing = tmp_path / "existing"
    existing.mkdir()
    check_writable(
        [
            Location("store.root", f"s3://{bucket}/store", s3_endpoint),
            Location("output_dir", str(existing)),
            Location("logs.root", str(tmp_path / "new" / "logs")),
            Location("mlflow.artifact_location", (tmp_path / "art").as_uri()),
        ]
    )
    assert s3_keys(s3_endpoint, bucket) == []  # the probe was deleted
    assert list(existing.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]  # folders made for the probe removed again


def test_path_under_a_regular_file_is_not_a_directory(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(PreflightError) as err:
        check_writable([Location("output_dir", str(tmp_path / "file.txt" / "sub"))])
    assert str(err.value) == (
        f"1 output location(s) not writable; stopped before any compute: output_dir "
        f"{tmp_path}/file.txt/sub: not a directory: {tmp_path}/file.txt is a file"
    )


def test_location_that_is_a_file_is_not_a_directory(tmp_path):
    (tmp_path / "reports").write_text("x")
    with pytest.raises(
        PreflightError, match=f"output_dir {tmp_path}/reports: not a directory: {tmp_path}/reports is a file"
    ):
        check_writable([Location("output_dir", str(tmp_path / "reports"))])


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.path.isdir("/sys/kernel"), reason="needs Linux sysfs"
)
def test_permission_denied_even_for_root():
    """sysfs refuses new folders to every user, root included (chmod does not stop root)."""
    with pytest.raises(
        PreflightError, match="logs.root /sys/kdflow-preflight/logs: permission denied: /sys/kdflow-preflight"
    ):
        check_writable([Location("logs.root", "/sys/kdflow-preflight/logs")])


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes")
def test_read_only_directory_is_permission_denied(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(PreflightError, match=f"output_dir {ro}/out: permission denied"):
        check_writable([Location("output_dir", str(ro / "out"))])


def test_missing_bucket(s3_endpoint):
    with pytest.raises(PreflightError) as err:
        check_writable([Location("store.root", "s3://kdflow-preflight-missing/store", s3_endpoint)])
    [(loc, why)] = err.value.problems
    assert loc.uri == "s3://kdflow-preflight-missing/store"
    assert why == f"bucket 'kdflow-preflight-missing' does not exist at {s3_endpoint} (NoSuchBucket)"
    assert isinstance(err.value, StoreError)  # the CLI's known errors: one line, exit 2


def use_keys(monkeypatch, key_id: str, secret: str) -> None:
    """Switch this process to other AWS keys. boto3 caches the credentials of its default session: dropping that
    session makes the next client read the environment again (monkeypatch restores both afterwards)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)


def test_rejected_and_insufficient_credentials(s3_endpoint, monkeypatch):
    from moto.core.authorization import enable_iam_authentication

    bucket = make_bucket(s3_endpoint, "kdflow-preflight-locked")
    client = boto3.client("iam", endpoint_url=s3_endpoint)
    client.create_user(UserName="kdflow-no-rights")
    key = client.create_access_key(UserName="kdflow-no-rights")["AccessKey"]  # a real user with no policy at all
    where = Location("store.root", f"s3://{bucket}/store", s3_endpoint)
    with enable_iam_authentication():
        use_keys(monkeypatch, "AKIAWRONGWRONGWRONG1", "wrong-secret")
        assert probe(where) == (
            f"the credentials were rejected at {s3_endpoint} (InvalidAccessKeyId); check "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile boto3 uses"
        )
        use_keys(monkeypatch, key["AccessKeyId"], "not-its-secret")
        assert probe(where).startswith(f"the credentials were rejected at {s3_endpoint} (SignatureDoesNotMatch)")
        use_keys(monkeypatch, key["AccessKeyId"], key["SecretAccessKey"])
        assert probe(where) == (
            f"access denied at {s3_endpoint} (AccessDenied): the credentials may not write to bucket '{bucket}'"
        )
        with pytest.raises(PermanentStoreError, match="access denied \\(AccessDenied\\)") as err:
            open_store(where.uri, s3_endpoint).put("k", b"1")
    assert err.value.code == "AccessDenied"


def test_every_unwritable_location_is_named_in_one_error(tmp_path, s3_endpoint):
    (tmp_path / "file.txt").write_text("x")
    ok = Location("logs.root", str(tmp_path / "logs"))
    with pytest.raises(PreflightError) as err:
        check_writable(
            [
                Location("store.root", "s3://kdflow-preflight-gone/s", s3_endpoint),
                ok,
                Location("output_dir", str(tmp_path / "file.txt" / "r")),
                Location("store.root", "gs://elsewhere/x"),
            ]
        )
    message = str(err.value)
    assert message.startswith("3 output location(s) not writable") and "\n" not in message
    assert [loc.label for loc, _ in err.value.problems] == ["store.root", "output_dir", "store.root"]
    assert "kdflow-preflight-gone" in message and "file.txt is a file" in message
    assert "unsupported store URI scheme 'gs'" in message and str(tmp_path / "logs") not in message


def test_output_locations_from_a_config(monkeypatch):
    from kdflow.config import DistillConfig

    cfg = DistillConfig.model_validate(
        {
            "data": {"train": "t", "val": "v", "test": "s", "num_classes": 3},
            "teacher_uri": "models:/t@champion",
            "student": {"arch": "mlp"},
            "registry": {"student_name": "s"},
            "output_dir": "out",
            "store": {"root": "s3://b-store/p", "endpoint_url": "http://minio:9000"},
            "logs": {"root": "s3://b-logs/l"},
            "mlflow": {"artifact_location": "s3://b-mlflow/a"},
        }
    )
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://minio:9001")
    assert output_locations(cfg, ("store", "reports", "mlflow", "logs")) == [
        Location("store.root", "s3://b-store/p", "http://minio:9000"),
        Location("output_dir", "out"),
        Location("mlflow.artifact_location", "s3://b-mlflow/a", "http://minio:9001"),
        Location("logs.root", "s3://b-logs/l"),
    ]
    cfg.mlflow.artifact_location = "mlflow-artifacts:/exp"  # written by the tracking server, not by us
    assert output_locations(cfg, ("mlflow",)) == []
    with pytest.raises(ValueError, match="unknown output 'bucket'"):
        output_locations(cfg, ("bucket",))


def test_retry_condition_skips_only_permanent_store_errors():
    from prefect.states import Failed

    from tasks.preflight import retry_unless_permanent

    permanent = PermanentStoreError("S3 put failed: bucket 'b' does not exist", "NoSuchBucket")
    try:  # a permanent error wrapped by another (as LogitStore wraps store errors) is still permanent
        try:
            raise permanent
        except PermanentStoreError as exc:
            raise RuntimeError("shard write failed") from exc
    except RuntimeError as exc:
        wrapped = exc
    assert not retry_unless_permanent(None, None, Failed(data=permanent))
    assert not retry_unless_permanent(None, None, Failed(data=wrapped))
    assert not retry_unless_permanent(None, None, Failed(data=PreflightError([(Location("a", "b"), "c")])))
    assert retry_unless_permanent(None, None, Failed(data=StoreError("S3 get failed: SlowDown")))
    assert retry_unless_permanent(None, None, Failed(data=ConnectionResetError("reset")))


@pytest.mark.slow
def test_retried_store_task_attempts_a_permanent_error_once(prefect_harness, s3_endpoint):
    """finalize-teacher-logits (retries=1) reading from a missing bucket: one task run attempt, one S3 request;
    the same task on an existing bucket with a missing object (not permanent) is retried: two of each."""
    from prefect import flow
    from prefect.client.orchestration import get_client

    from kdflow.config import DistillConfig
    from kdflow.registry import ModelRef
    from tasks.logits import LogitPlan, finalize_teacher_logits
    from tests.s3_proxy import FaultyS3Proxy

    bucket = make_bucket(s3_endpoint, "kdflow-preflight-retry")
    teacher = ModelRef("models:/t/1", "t", "1", None)

    def attempts(root: str, proxy: FaultyS3Proxy) -> tuple[int, int, str]:
        cfg = DistillConfig.model_validate(
            {
                "data": {"train": "t", "val": "v", "test": "s", "num_classes": 3},
                "teacher_uri": "models:/t@champion",
                "student": {"arch": "mlp"},
                "registry": {"student_name": "s"},
                "store": {"root": root, "endpoint_url": proxy.url},
            }
        )

        @flow
        def finalize_only() -> tuple[str, BaseException]:
            state = finalize_teacher_logits(cfg, teacher, {}, LogitPlan(need_profile=False), [], 0.0, return_state=True)
            return str(state.state_details.task_run_id), state.result(raise_on_failure=False)

        task_run_id, error = finalize_only()
        with get_client(sync_client=True) as client:
            run = client.read_task_run(task_run_id)
        assert isinstance(error, StoreError)
        return run.run_count, proxy.forwarded, str(error)

    with FaultyS3Proxy(s3_endpoint, failures=0) as proxy:
        runs, requests, message = attempts("s3://kdflow-preflight-absent/store", proxy)
    assert (runs, requests) == (1, 1) and "bucket 'kdflow-preflight-absent' does not exist" in message
    with FaultyS3Proxy(s3_endpoint, failures=0) as proxy:
        runs, requests, message = attempts(f"s3://{bucket}/store", proxy)
    assert (runs, requests) == (2, 2) and "object not found" in message
