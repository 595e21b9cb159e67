"""Local-disk storage under {data_dir}/files: the default backend."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterator

from flashhead.errors import NotFound
from flashhead.storage.base import READ_BLOCK, Storage, StoredFile, check_key, describe_file


class LocalStorage(Storage):
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        super().__init__(self.root / ".staging")

    def _paths(self, key: str) -> tuple[Path, Path]:
        check_key(key)
        return self.root / key, self.root / f"{key}.meta.json"

    def put_file(self, path: Path, content_type: str | None, file_name: str | None,
                 key: str | None = None) -> StoredFile:
        f = describe_file(path, content_type, file_name, key)
        data_path, meta_path = self._paths(f.key)
        tmp = data_path.with_name(data_path.name + ".part")
        shutil.copyfile(path, tmp)
        os.replace(tmp, data_path)       # atomic: a reader never sees half a file
        meta_path.write_text(self.meta_json(f))
        return f

    def stat(self, key: str) -> StoredFile:
        data_path, meta_path = self._paths(key)
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise NotFound("no such file", field="key") from None
        return StoredFile(**{**meta, "size": data_path.stat().st_size})

    def open_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        data_path, _ = self._paths(key)
        with open(data_path, "rb") as fh:
            fh.seek(start)
            left = end - start + 1
            while left > 0:
                block = fh.read(min(READ_BLOCK, left))
                if not block:
                    break
                left -= len(block)
                yield block

    def local_path(self, key: str) -> Path | None:
        data_path, _ = self._paths(key)
        return data_path if data_path.exists() else None
