"""Local-disk storage under {data_dir}/files: the default backend."""
from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator

from flashhead.errors import AlreadyStored, NotFound
from flashhead.storage.base import (GONE, READ_BLOCK, RESULT, Storage, StoredFile, check_key,
                                    describe_file, disk_errors, mtime)


_NO_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK)


def _place_new(src: Path, dst: Path) -> None:
    """Move the bytes at `src` to `dst` only if nothing is there (AlreadyStored else): of racing
    callers, one places its file. A hard link (made only where no file is), or on a filesystem
    without them an exclusive create that reserves the name."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise AlreadyStored("this key holds a file already", field="key") from None
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        try:
            os.close(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            raise AlreadyStored("this key holds a file already", field="key") from None
        try:
            os.replace(src, dst)
        except BaseException:
            dst.unlink(missing_ok=True)          # the reservation, not a file
            raise
        return
    src.unlink()


class LocalStorage(Storage):
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        super().__init__(self.root / ".staging")

    def _paths(self, key: str) -> tuple[Path, Path]:
        check_key(key)
        return self.root / key, self.root / f"{key}.meta.json"

    def put_file(self, path: Path, content_type: str | None, file_name: str | None,
                 key: str | None = None, kind: str = RESULT, exclusive: bool = False) -> StoredFile:
        f = describe_file(path, content_type, file_name, key, kind)
        data_path, meta_path = self._paths(f.key)
        tmp = data_path.with_name(f"{data_path.name}.{secrets.token_hex(4)}.part")
        placed = False
        try:
            with disk_errors():
                shutil.copyfile(path, tmp)
                if exclusive:
                    _place_new(tmp, data_path)
                    placed = True
                else:
                    os.replace(tmp, data_path)   # atomic: a reader never sees half a file
                meta_path.write_text(self.meta_json(f))
        except BaseException:
            tmp.unlink(missing_ok=True)
            if placed:                           # not half stored: a retry can store it whole
                data_path.unlink(missing_ok=True)
            raise
        return f

    def stat(self, key: str) -> StoredFile:
        data_path, meta_path = self._paths(key)
        try:
            meta = json.loads(meta_path.read_text())
            size = data_path.stat().st_size
        except (FileNotFoundError, ValueError):    # never stored, expired, or being deleted
            raise NotFound(GONE, field="key") from None
        return StoredFile(**{**meta, "size": size})

    def open_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Opened here, before the caller starts a response: a file deleted meanwhile is a 404."""
        data_path, _ = self._paths(key)
        try:
            fh = open(data_path, "rb")
        except FileNotFoundError:
            raise NotFound(GONE, field="key") from None
        return _blocks(fh, start, end)

    def local_path(self, key: str) -> Path | None:
        data_path, _ = self._paths(key)
        return data_path if data_path.exists() else None

    # --- bounds and retention ---
    def list_expired(self, before: dict[str, float]) -> list[str]:
        """A file's age is its meta file's mtime (written once, when the file was stored)."""
        out = []
        for meta_path in self.root.glob("*.meta.json"):
            try:
                kind = json.loads(meta_path.read_text()).get("kind", RESULT)
                stored_at = meta_path.stat().st_mtime
            except (FileNotFoundError, ValueError):
                continue
            if kind in before and stored_at < before[kind]:
                out.append(meta_path.name[:-len(".meta.json")])
        return sorted(out)

    def delete(self, key: str) -> None:
        data_path, meta_path = self._paths(key)
        meta_path.unlink(missing_ok=True)      # first: stat() says "gone" from now on
        data_path.unlink(missing_ok=True)

    def staging_expired(self, before: float) -> list[Path]:
        """Staging, plus `.part` copies left in the file folder by a put that died midway."""
        parts = [p for p in self.root.glob("*.part") if mtime(p) < before]
        return super().staging_expired(before) + sorted(parts)


def _blocks(fh, start: int, end: int) -> Iterator[bytes]:
    with fh:
        fh.seek(start)
        left = end - start + 1
        while left > 0:
            block = fh.read(min(READ_BLOCK, left))
            if not block:
                break
            left -= len(block)
            yield block
