"""File storage for uploads and outputs: unguessable keys, content types, byte ranges.

Every backend serves files through the API's /files/{key} route (range requests included),
so returned URLs look the same whatever the backend. A file's content type is sniffed from
its bytes (flashhead.media.sniff): media keep their type, anything else is stored as
application/octet-stream, whatever its uploader declared or named it.
"""
from __future__ import annotations

import errno
import json
import re
import secrets
import shutil
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from flashhead.errors import InputError, NotFound, PayloadTooLarge, StorageFull
from flashhead.media.sniff import AUDIO, HEAD_BYTES, IMAGE, OCTET, served_type, stored_type

FILES_PREFIX = "/files"
KEY_BYTES = 24                              # 192 random bits: unguessable
READ_BLOCK = 256 * 1024
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{32}(\.[A-Za-z0-9]{1,10})?$")


# What a stored file is: retention keeps uploads and results for different times.
UPLOAD, RESULT = "upload", "result"
GONE = "no such file: it never existed, or it expired (stored files are kept for a limited time)"
STAGING_PATTERNS = ("mp-*", "put-*", "join-*", "body-*")      # everything put under staging_dir


@dataclass
class StoredFile:
    key: str
    size: int
    content_type: str
    file_name: str
    kind: str = RESULT                 # UPLOAD | RESULT; files stored before kinds existed: RESULT


def new_key(ext: str = "") -> str:
    """Random key, with the extension of the file's media type (none for other files)."""
    return secrets.token_urlsafe(KEY_BYTES) + ext


def declared_ext(content_type: str | None) -> str:
    """The key extension for a file whose bytes are not here yet (multipart, signed uploads):
    that of the declared type when it is a media type, else none. Only cosmetic: the served
    type is sniffed from the bytes when they arrive."""
    ctype = served_type(content_type)
    return next((k.ext for k in (*AUDIO, *IMAGE) if k.mime == ctype), "")


def check_key(key: str) -> str:
    if not _KEY_RE.match(key):
        raise NotFound("no such file", field="key")
    return key


def describe_file(path: Path, declared: str | None, file_name: str | None, key: str | None,
                  kind: str = RESULT) -> StoredFile:
    """The StoredFile for bytes about to be stored: type sniffed from them, a new key unless given.
    kind: UPLOAD or RESULT (retention keeps them for different times)."""
    with open(path, "rb") as fh:
        media = stored_type(fh.read(HEAD_BYTES), declared)
    key = key or new_key(media.ext if media else "")
    return StoredFile(key, Path(path).stat().st_size, media.mime if media else OCTET,
                      safe_name(file_name, key), kind)


def safe_name(file_name: str | None, key: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(file_name or "").name)[:120].strip("._")
    return name or key


class Storage(ABC):
    """put a file -> key; stat / read ranges / delete by key; multipart staging on local disk."""

    files_url: str | None = None    # serve files from this origin instead of the API's (Settings.files_url)

    def __init__(self, staging_dir: Path):
        self.staging = Path(staging_dir)
        self.staging.mkdir(parents=True, exist_ok=True)

    @abstractmethod
    def put_file(self, path: Path, content_type: str | None, file_name: str | None,
                 key: str | None = None, kind: str = RESULT, exclusive: bool = False) -> StoredFile:
        """Store the file under `key` (a new key when None). exclusive: only if the key holds
        nothing yet, else AlreadyStored; of two racing exclusive puts, exactly one stores."""

    @abstractmethod
    def stat(self, key: str) -> StoredFile: ...

    @abstractmethod
    def open_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes start..end inclusive."""

    def local_path(self, key: str) -> Path | None:
        """A local file holding the bytes, when the backend has one (lets jobs skip HTTP)."""
        return None

    def url(self, key: str, base_url: str) -> str:
        return f"{(self.files_url or base_url).rstrip('/')}{FILES_PREFIX}/{key}"

    def own_hosts(self, base_url: str) -> set[str]:
        """Hosts whose /files/ URLs are this storage's files: the API's and the files origin."""
        return {urlsplit(u).netloc for u in (base_url, self.files_url) if u}

    def put_bytes(self, data: bytes, content_type: str | None, file_name: str | None) -> StoredFile:
        tmp = self.staging / f"put-{secrets.token_hex(8)}"
        try:
            with disk_errors():
                tmp.write_bytes(data)
            return self.put_file(tmp, content_type, file_name)
        finally:
            tmp.unlink(missing_ok=True)

    # multipart: parts are staged on local disk and joined on complete
    def create_multipart(self, content_type: str | None, file_name: str | None) -> tuple[str, str]:
        key, upload_id = new_key(declared_ext(content_type)), secrets.token_urlsafe(16)
        d = self.staging / f"mp-{upload_id}"
        with disk_errors():
            d.mkdir()
            (d / "meta.json").write_text(json.dumps({"key": key, "content_type": content_type,
                                                     "file_name": file_name}))
        return key, upload_id

    def _multipart_dir(self, key: str, upload_id: str) -> tuple[Path, dict]:
        if not re.fullmatch(r"[A-Za-z0-9_-]{16,32}", upload_id):
            raise NotFound("no such upload", field="uploadId")
        d = self.staging / f"mp-{upload_id}"
        try:
            meta = json.loads((d / "meta.json").read_text())
        except FileNotFoundError:
            raise NotFound("no such upload", field="uploadId") from None
        if meta["key"] != key:
            raise NotFound("no such upload", field="uploadId")
        return d, meta

    def put_part(self, key: str, upload_id: str, number: int, src: Path) -> str:
        d, _ = self._multipart_dir(key, upload_id)
        if not 1 <= number <= 10_000:
            raise InputError("part number must be 1..10000", field="partNumber")
        dest = d / f"part-{number:05d}"
        others = sum(f.stat().st_size for f in d.glob("part-*") if f != dest)
        self.check_total(others + Path(src).stat().st_size)
        with disk_errors():
            shutil.move(str(src), dest)
        return f"{number}-{dest.stat().st_size}"

    def complete_multipart(self, key: str, upload_id: str, parts: list[int] | None) -> StoredFile:
        d, meta = self._multipart_dir(key, upload_id)
        files = sorted(d.glob("part-*"))
        if not files:
            raise InputError("no parts were uploaded", field="parts")
        if parts is not None and sorted(parts) != [int(f.name[5:]) for f in files]:
            raise InputError("the part list does not match the uploaded parts", field="parts")
        total = sum(f.stat().st_size for f in files)
        self.check_total(total)
        self.check_room(2 * total)                  # the joined file, then its stored copy
        joined = self.staging / f"join-{upload_id}"
        try:
            with disk_errors(), open(joined, "wb") as out:
                for f in files:
                    with open(f, "rb") as src:
                        shutil.copyfileobj(src, out, READ_BLOCK)
            return self.put_file(joined, meta["content_type"], meta["file_name"], key=key, kind=UPLOAD)
        finally:
            joined.unlink(missing_ok=True)
            shutil.rmtree(d, ignore_errors=True)

    @staticmethod
    def meta_json(f: StoredFile) -> str:
        return json.dumps(asdict(f))

    # --- bounds and retention ---
    max_upload_bytes: int = 1024 ** 3       # the server sets Settings.max_upload_bytes
    upload_reserve_bytes: int = 0           # ... and Settings.upload_reserve_bytes

    def check_total(self, size: int) -> None:
        """One upload, multipart parts all together included, is at most max_upload_bytes, and
        it grows only while the disk it is staged on keeps upload_reserve_bytes free (for results:
        a job writes its video past the reserve, an upload never)."""
        if size > self.max_upload_bytes:
            raise PayloadTooLarge(f"uploads are limited to {self.max_upload_bytes} bytes in total",
                                  field="body")
        self.check_room(0)

    def check_room(self, more: int) -> None:
        """An upload may write `more` bytes (its copies: staged, joined, stored) only while that
        leaves upload_reserve_bytes free on the disk it is staged on."""
        if self.upload_reserve_bytes and \
                shutil.disk_usage(self.staging).free - more < self.upload_reserve_bytes:
            raise StorageFull("the server's disk is nearly full: uploads are refused until space is freed "
                              "(the rest is kept for results); try again later", field="storage")

    def list_expired(self, before: dict[str, float]) -> list[str]:
        """Keys of the files of each kind stored before `before[kind]` (unix time)."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Remove a file; a missing one is not an error."""
        raise NotImplementedError

    def staging_expired(self, before: float) -> list[Path]:
        """Staging entries (multipart uploads, bodies being received) last touched before `before`."""
        found = {p for pattern in STAGING_PATTERNS for p in self.staging.glob(pattern)}
        return sorted(p for p in found if mtime(p) < before)


FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def disk_errors():
    """A full disk (or quota) while writing -> StorageFull, so the request or job names the cause.
    Nothing is remembered: the next write tries again, so service resumes once space is back."""
    try:
        yield
    except OSError as exc:
        if exc.errno in FULL_ERRNOS:
            raise StorageFull("no space left to store files; try again later", field="storage") from None
        raise


def mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")           # gone meanwhile: nothing to delete


def remove_path(path: Path) -> None:
    """Delete a file or a folder; one already gone is fine."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
