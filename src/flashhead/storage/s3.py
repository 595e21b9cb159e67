"""S3-compatible storage (boto3): AWS S3, MinIO, Ceph, ... Objects are read back through the
API's /files route, so the bucket can stay private.

Object layout: {prefix}{key}, with the content type as the object's Content-Type and the
download name as user metadata `file-name`. Several servers pointed at the same bucket and
prefix serve each other's files (the keys are random, so they never collide).
Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile,
an instance role).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

from flashhead.errors import AlreadyStored, BackendUnavailable, NotFound, StorageFull
from flashhead.storage.base import GONE, READ_BLOCK, RESULT, Storage, StoredFile, check_key, describe_file

_MISSING = ("404", "NoSuchKey", "NotFound")
_TAKEN = ("PreconditionFailed", "ConditionalRequestConflict")      # If-None-Match: * lost
_CONFLICT_TRIES = 3
_FULL = ("QuotaExceeded", "XMinioStorageFull", "EntityTooLarge")   # bucket quota / full MinIO disk


def normalize_prefix(prefix: str | None) -> str:
    """'' stays '' (keys at the bucket root); anything else ends with exactly one '/'."""
    prefix = (prefix or "").strip("/")
    return f"{prefix}/" if prefix else ""


def _code(exc: Exception) -> str:
    """The S3 error code of a botocore ClientError ('' for any other exception)."""
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _error(exc: Exception, what: str) -> Exception:
    """botocore's ClientError for a missing object -> NotFound; anything else (a refused
    connection, bad credentials, a missing bucket) -> BackendUnavailable."""
    code = _code(exc)
    if code in _MISSING:
        return NotFound(GONE, field="key")
    if code in _TAKEN:
        return AlreadyStored("this key holds a file already", field="key")
    if code in _FULL:
        return StorageFull(f"S3 {what} failed: the storage is full ({code})", field="storage")
    return BackendUnavailable(f"S3 {what} failed: {exc}", field="storage")


class S3Storage(Storage):
    def __init__(self, bucket: str, staging_dir: Path, *, prefix: str = "files/",
                 endpoint_url: str | None = None, region: str | None = None, client=None):
        import boto3

        super().__init__(staging_dir)
        self.bucket, self.prefix = bucket, normalize_prefix(prefix)
        self.s3 = client or boto3.client("s3", endpoint_url=endpoint_url or None, region_name=region or None)

    def _obj(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put_file(self, path: Path, content_type: str | None, file_name: str | None,
                 key: str | None = None, kind: str = RESULT, exclusive: bool = False) -> StoredFile:
        """exclusive: see _put_new. Else boto3's upload_file (multipart when large)."""
        f = describe_file(path, content_type, file_name, key, kind)
        args = {"ContentType": f.content_type, "Metadata": {"file-name": f.file_name, "kind": kind}}
        try:
            if exclusive:
                self._put_new(path, self._obj(f.key), args)
            else:
                self.s3.upload_file(str(path), self.bucket, self._obj(f.key), ExtraArgs=args)
        except AlreadyStored:
            raise
        except Exception as exc:  # botocore and s3transfer raise many unrelated classes
            err = _error(getattr(exc, "last_exception", None) or exc, "upload")
            if isinstance(err, (StorageFull, AlreadyStored)):
                raise err from exc
            raise BackendUnavailable(f"S3 upload failed: {exc}", field="storage") from exc
        return f

    def _put_new(self, path: Path, obj: str, args: dict) -> None:
        """Only if no object is there: a HEAD, then one PUT with If-None-Match: * (S3's
        conditional write, so of racing PUTs one stores). A 409 (another conditional write in
        flight) is tried again; a store that refuses the header (501) gets a plain PUT, and one
        that ignores it replaces an object only when racing past the HEAD."""
        if self._exists(obj):
            raise AlreadyStored("this key holds a file already", field="key")
        for attempt in range(_CONFLICT_TRIES):
            try:
                with open(path, "rb") as body:
                    self.s3.put_object(Bucket=self.bucket, Key=obj, Body=body, IfNoneMatch="*", **args)
                return
            except Exception as exc:  # noqa: BLE001 - sorted by its S3 error code
                code = _code(exc)
                if code == "NotImplemented":
                    with open(path, "rb") as body:
                        self.s3.put_object(Bucket=self.bucket, Key=obj, Body=body, **args)
                    return
                if code != "ConditionalRequestConflict" or attempt == _CONFLICT_TRIES - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))

    def _exists(self, obj: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=obj)
        except Exception as exc:  # noqa: BLE001
            if _code(exc) in _MISSING:
                return False
            raise
        return True

    def stat(self, key: str) -> StoredFile:
        try:
            h = self.s3.head_object(Bucket=self.bucket, Key=self._obj(key))
        except NotFound:
            raise
        except Exception as exc:
            raise _error(exc, "stat") from exc
        meta = h.get("Metadata", {})
        return StoredFile(key, int(h["ContentLength"]), h.get("ContentType") or "application/octet-stream",
                          meta.get("file-name", key), meta.get("kind", RESULT))

    def open_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """The GET is made here, before the caller starts a response, so a missing object or an
        unreachable S3 raises NotFound / BackendUnavailable instead of breaking a body midway."""
        try:
            obj = self.s3.get_object(Bucket=self.bucket, Key=self._obj(key), Range=f"bytes={start}-{end}")
        except NotFound:
            raise
        except Exception as exc:
            raise _error(exc, "read") from exc
        return _blocks(obj["Body"])

    # --- bounds and retention ---
    def list_expired(self, before: dict[str, float]) -> list[str]:
        """Objects under the prefix stored before their kind's cutoff (LastModified). The kind is
        user metadata, so only objects old enough for the shortest cutoff get a HEAD."""
        if not before:
            return []
        out, oldest_cutoff = [], max(before.values())
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(self.prefix):]
                    stored_at = obj["LastModified"].timestamp()
                    if "/" in key or stored_at >= oldest_cutoff:
                        continue
                    try:
                        kind = self.stat(key).kind
                    except NotFound:
                        continue
                    if kind in before and stored_at < before[kind]:
                        out.append(key)
        except (NotFound, BackendUnavailable):
            raise
        except Exception as exc:
            raise _error(exc, "list") from exc
        return sorted(out)

    def delete(self, key: str) -> None:
        try:
            self.s3.delete_object(Bucket=self.bucket, Key=self._obj(key))
        except Exception as exc:
            raise _error(exc, "delete") from exc


def _blocks(body) -> Iterator[bytes]:
    try:
        while block := body.read(READ_BLOCK):
            yield block
    finally:
        body.close()
