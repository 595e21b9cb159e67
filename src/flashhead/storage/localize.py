"""Inputs that name this server's own stored files (`<base>/files/<key>`) are read from storage,
not fetched over HTTP: the SSRF guard rightly refuses a loopback fetch. Used by the queue
workers and the render engine alike."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from flashhead import constants as C
from flashhead.media.urlguard import SCHEMES, url_scheme
from flashhead.storage.base import FILES_PREFIX, Storage


def own_file_key(value, hosts: set[str]) -> str | None:
    """The storage key when `value` is a URL of a file stored here (host in `hosts`), else None."""
    if not isinstance(value, str) or url_scheme(value) not in SCHEMES or len(value) > C.MAX_URL_CHARS:
        return None                     # (a data: URI must not reach urlsplit's cache)
    try:
        parts = urlsplit(value.strip())
    except ValueError:                  # malformed: not ours (the SSRF guard refuses it)
        return None
    prefix = FILES_PREFIX + "/"
    if parts.netloc not in hosts or not parts.path.startswith(prefix):
        return None
    key = parts.path[len(prefix):]
    return key if key and "/" not in key else None


def localize(payload: dict, storage: Storage, hosts: set[str], work_dir: Path) -> tuple[dict, bool]:
    """-> (payload with own-file `*_url` values replaced by local paths, whether any was).
    Files not on local disk (S3) are copied into `work_dir` first."""
    out, local = dict(payload), False
    for name, value in payload.items():
        key = own_file_key(value, hosts) if name.endswith("_url") else None
        if key is None:
            continue
        path = storage.local_path(key)
        if path is None:
            path = Path(work_dir) / f"in-{name}-{key}"
            size = storage.stat(key).size
            with open(path, "wb") as fh:
                for block in storage.open_range(key, 0, max(0, size - 1)):
                    fh.write(block)
        out[name], local = str(path), True
    return out, local
