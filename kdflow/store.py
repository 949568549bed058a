"""Object storage addressed by URI: a local directory (plain path or ``file://``) or ``s3://bucket/prefix``.

Both back-ends expose the same small interface (put/get/exists/list/delete). Local writes go to a
temporary file that is renamed into place, so a reader never sees half an object; S3 PUTs are atomic.
S3 uses the standard boto3 credential chain; ``endpoint_url`` (or ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``) points it at MinIO, moto or any S3-compatible store.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import urlparse

# S3 error codes that no retry can fix: the credentials are wrong, lack permission, or the bucket/object is
# not there. Anything else (throttling, 5xx, a dropped connection) may pass and is retried.
REJECTED_CREDENTIALS = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AuthorizationHeaderMalformed",
    }
)
ACCESS_DENIED = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem", "Forbidden", "403"})
MISSING = frozenset({"NoSuchBucket", "NoSuchKey", "NotFound", "404"})
PERMANENT_S3_ERRORS = REJECTED_CREDENTIALS | ACCESS_DENIED | MISSING | {"InvalidBucketName", "PermanentRedirect", "301"}


class StoreError(RuntimeError):
    """An object store operation failed; the message names the store and the key."""


class PermanentStoreError(StoreError):
    """A store operation failed in a way no retry can fix (missing bucket, rejected or insufficient
    credentials); ``code`` is the S3 error code (or ``NoCredentials``)."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


def s3_error_code(exc: BaseException) -> str:
    """The S3 error code of ``exc`` or of an exception it wraps (``""`` if none): ``NoSuchBucket``,
    ``AccessDenied``, ``403`` (a HEAD has no body, only the status)..."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        code = (getattr(e, "response", None) or {}).get("Error", {}).get("Code", "")
        if code:
            return str(code)
        e = e.__cause__ or e.__context__
    return ""


def validate_key(key: str) -> str:
    """Reject keys that could escape the store root (absolute, ``..``, empty segments, backslashes)."""
    if not key or key.startswith("/") or "\\" in key:
        raise StoreError(f"invalid object key {key!r}: must be a relative path")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"invalid object key {key!r}: no empty, '.' or '..' segments")
    return key


class ObjectStore(ABC):
    """A flat key -> bytes store under one root URI."""

    uri: str

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` atomically (readers see the old object or the whole new one)."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Read the object at ``key``; :class:`StoreError` if it is missing."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored at ``key``."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix`` (relative to the store root), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object at ``key`` if present."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Size in bytes of the object at ``key``."""

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes of the object at ``key`` from byte ``start`` (fewer at its end); this default reads the
        whole object, the back-ends read only the range."""
        return self.get(key)[start : start + length]

    def url(self, key: str) -> str:
        """The full URI of ``key``, for messages and tags."""
        return f"{self.uri.rstrip('/')}/{key}"


class LocalStore(ObjectStore):
    """Objects as files under a local directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise StoreError(f"object not found: {self.url(key)}") from exc

    def read_range(self, key: str, start: int, length: int) -> bytes:
        try:
            with self._path(key).open("rb") as fh:
                fh.seek(start)
                return fh.read(length)
        except FileNotFoundError as exc:
            raise StoreError(f"object not found: {self.url(key)}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.exists():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not posixpath.basename(k).startswith("."))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as exc:
            raise StoreError(f"object not found: {self.url(key)}") from exc


class S3Store(ObjectStore):
    """Objects in an S3 bucket under a prefix, through boto3 (retries in adaptive mode)."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, client: object | None = None):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        self.client = client or boto3.client(
            "s3", endpoint_url=endpoint, config=Config(retries={"max_attempts": 8, "mode": "adaptive"})
        )

    def _key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, op: str, key: str, exc: Exception) -> StoreError:
        """The :class:`StoreError` for a failed S3 call: a :class:`PermanentStoreError` when retrying cannot help."""
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError

        code, where = s3_error_code(exc), f"S3 {op} failed for {self.url(key)}"
        check = "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile boto3 uses"
        if code in REJECTED_CREDENTIALS:
            return PermanentStoreError(f"{where}: the credentials were rejected ({code}); {check}: {exc}", code)
        if code in ACCESS_DENIED:
            return PermanentStoreError(
                f"{where}: access denied ({code}): the credentials were rejected or lack "
                f"permission here; {check}: {exc}",
                code,
            )
        if code == "NoSuchBucket":
            return PermanentStoreError(
                f"{where}: bucket {self.bucket!r} does not exist ({code}); create it or fix the URI: {exc}", code
            )
        if code in PERMANENT_S3_ERRORS:
            return PermanentStoreError(f"{where}: {exc}", code)
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return PermanentStoreError(f"{where}: no usable AWS credentials; {check}: {exc}", "NoCredentials")
        return StoreError(f"{where}: {exc}")

    def put(self, key: str, data: bytes) -> None:
        import io

        from boto3.s3.transfer import TransferConfig

        try:
            # upload_fileobj switches to multipart upload above the threshold (8 MiB by default).
            self.client.upload_fileobj(io.BytesIO(data), self.bucket, self._key(key), Config=TransferConfig())
        except Exception as exc:
            raise self._fail("put", key, exc) from exc

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404"):
                raise StoreError(f"object not found: {self.url(key)}") from exc
            raise self._fail("get", key, exc) from exc
        except Exception as exc:
            raise self._fail("get", key, exc) from exc

    def read_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        try:
            rng = f"bytes={start}-{start + length - 1}"
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key), Range=rng)["Body"].read()
        except Exception as exc:
            if s3_error_code(exc) == "InvalidRange":  # at or past the end
                return b""
            raise self._fail("get", key, exc) from exc

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._fail("head", key, exc) from exc

    def list(self, prefix: str = "") -> list[str]:
        full = (
            self._key(prefix.rstrip("/")) + ("/" if prefix.endswith("/") else "")
            if prefix
            else (f"{self.prefix}/" if self.prefix else "")
        )
        keys: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                keys += [o["Key"] for o in page.get("Contents", [])]
        except Exception as exc:
            raise self._fail("list", prefix or ".", exc) from exc
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted(k[strip:] for k in keys)

    def size(self, key: str) -> int:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except Exception as exc:
            raise self._fail("head", key, exc) from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise self._fail("delete", key, exc) from exc


def open_store(uri: str, endpoint_url: str | None = None) -> ObjectStore:
    """Open the store at ``uri``: ``s3://bucket/prefix``, ``file:///abs/dir`` or a plain path."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if len(parsed.netloc) < 3:
            raise StoreError(f"invalid S3 URI {uri!r}: bucket name must have 3+ characters")
        return S3Store(parsed.netloc, parsed.path, endpoint_url=endpoint_url)
    if parsed.scheme == "file":
        return LocalStore(parsed.path)
    if parsed.scheme in ("",) or (len(parsed.scheme) == 1 and os.name == "nt"):
        return LocalStore(uri)
    raise StoreError(f"unsupported store URI scheme {parsed.scheme!r} in {uri!r} (use a path, file:// or s3://)")


def split_uri(uri: str) -> tuple[str, str]:
    """Split a file URI into (directory URI, object key) so a single file can be read through a store."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        bucket = parsed.netloc
        head, _, tail = parsed.path.lstrip("/").rpartition("/")
        return f"s3://{bucket}/{head}".rstrip("/"), tail
    path = Path(parsed.path if parsed.scheme == "file" else uri)
    return str(path.parent), path.name
