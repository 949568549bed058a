"""Object stores: a local directory and S3 over real HTTP (moto's server on 127.0.0.1)."""

import pytest

from kdflow.store import LocalStore, PermanentStoreError, StoreError, open_store, s3_error_code, validate_key
from tests.conftest import make_bucket


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(str(tmp_path / "root"))
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = make_bucket(endpoint, f"kdflow-{abs(hash(tmp_path.name)) % 10**8}")
    return open_store(f"s3://{bucket}/prefix", endpoint_url=endpoint)


def test_put_get_list_delete(store):
    store.put("a/b/one.bin", b"1")
    store.put("a/two.bin", b"22")
    assert store.get("a/b/one.bin") == b"1"
    assert store.exists("a/two.bin") and not store.exists("a/three.bin")
    assert store.list("a/") == ["a/b/one.bin", "a/two.bin"]
    store.put("a/two.bin", b"333")
    assert store.get("a/two.bin") == b"333"
    store.delete("a/two.bin")
    assert store.list() == ["a/b/one.bin"]
    with pytest.raises(StoreError, match="object not found"):
        store.get("a/two.bin")


@pytest.mark.parametrize("key", ["../x", "/abs", "a/../b", "a//b", "", "a\\b", "./a"])
def test_keys_that_escape_the_root_are_rejected(key):
    with pytest.raises(StoreError, match="invalid object key"):
        validate_key(key)


def test_local_store_leaves_no_temporary_files(tmp_path):
    s = LocalStore(tmp_path)
    s.put("k", b"x" * 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["k"]


def test_uri_schemes(tmp_path):
    assert isinstance(open_store(tmp_path.as_uri()), LocalStore)
    with pytest.raises(StoreError, match="unsupported store URI scheme"):
        open_store("gs://bucket/x")
    with pytest.raises(StoreError, match="3\\+ characters"):
        open_store("s3://ab/x")


def test_missing_bucket_is_a_clear_error(s3_endpoint):
    store = open_store("s3://no-such-bucket-kdflow/p", endpoint_url=s3_endpoint)
    with pytest.raises(StoreError, match="no-such-bucket-kdflow"):
        store.put("k", b"1")


def test_store_classifies_permanent_s3_errors(s3_endpoint):
    with pytest.raises(PermanentStoreError, match="bucket 'kdflow-preflight-nobucket' does not exist") as err:
        open_store("s3://kdflow-preflight-nobucket/p", endpoint_url=s3_endpoint).put("k", b"1")
    assert err.value.code == "NoSuchBucket"
    with pytest.raises(PermanentStoreError) as err:  # a HEAD has no body: only the status says what went wrong
        open_store(f"s3://{make_bucket(s3_endpoint, 'kdflow-preflight-head')}/p", endpoint_url=s3_endpoint).size("gone")
    assert err.value.code == "404"
    with pytest.raises(StoreError, match="object not found") as err:  # a missing object is an answer, not a fault
        open_store(f"s3://{make_bucket(s3_endpoint, 'kdflow-store-get')}/p", endpoint_url=s3_endpoint).get("gone")
    assert not isinstance(err.value, PermanentStoreError)


def test_s3_error_code_is_found_through_wrapping_exceptions():
    from botocore.exceptions import ClientError

    inner = ClientError(
        {"Error": {"Code": "NoSuchBucket", "Message": "The specified bucket does not exist"}}, "PutObject"
    )
    try:
        try:
            raise inner
        except ClientError:
            raise RuntimeError("Failed to upload")  # how boto3's S3UploadFailedError wraps it (implicit context)
    except RuntimeError as outer:
        assert s3_error_code(outer) == "NoSuchBucket"
    assert s3_error_code(ValueError("no response")) == ""
