"""S3-compatible storage (boto3): AWS S3, MinIO, Ceph, ... Objects are read back through the
API's /files route, so the bucket can stay private."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from flashhead.errors import BackendUnavailable, NotFound
from flashhead.storage.base import READ_BLOCK, Storage, StoredFile, check_key, content_type_for, new_key, safe_name


class S3Storage(Storage):
    def __init__(self, bucket: str, staging_dir: Path, *, prefix: str = "files/",
                 endpoint_url: str | None = None, region: str | None = None, client=None):
        import boto3

        super().__init__(staging_dir)
        self.bucket, self.prefix = bucket, prefix
        self.s3 = client or boto3.client("s3", endpoint_url=endpoint_url, region_name=region)

    def _obj(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put_file(self, path: Path, content_type: str | None, file_name: str | None,
                 key: str | None = None) -> StoredFile:
        key = key or new_key(file_name, content_type)
        ctype, name = content_type_for(file_name, content_type), safe_name(file_name, key)
        try:
            self.s3.upload_file(str(path), self.bucket, self._obj(key), ExtraArgs={
                "ContentType": ctype, "Metadata": {"file-name": name}})
        except Exception as exc:  # botocore raises many unrelated classes
            raise BackendUnavailable(f"S3 upload failed: {exc}", field="storage") from exc
        return StoredFile(key, Path(path).stat().st_size, ctype, name)

    def stat(self, key: str) -> StoredFile:
        try:
            h = self.s3.head_object(Bucket=self.bucket, Key=self._obj(key))
        except self.s3.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise NotFound("no such file", field="key") from None
            raise BackendUnavailable(f"S3 error: {exc}", field="storage") from exc
        return StoredFile(key, int(h["ContentLength"]), h.get("ContentType") or "application/octet-stream",
                          h.get("Metadata", {}).get("file-name", key))

    def open_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        obj = self.s3.get_object(Bucket=self.bucket, Key=self._obj(key), Range=f"bytes={start}-{end}")
        body = obj["Body"]
        try:
            while block := body.read(READ_BLOCK):
                yield block
        finally:
            body.close()
