"""Build the job store and file storage a Settings names (shared by the API process and the
render worker processes, which must open the same ones)."""
from __future__ import annotations

import os
from pathlib import Path

from flashhead.config import Settings
from flashhead.jobs.store import LEASE_S


def option(settings: Settings, name: str, default, cast=str):
    """A service option: a Settings field when the lead has added it, else FLASHHEAD_<NAME>."""
    value = getattr(settings, name, None)
    if value is None:
        value = os.environ.get(f"FLASHHEAD_{name.upper()}")
    return default if value in (None, "") else cast(value)


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def redis_url(settings: Settings) -> str | None:
    """The job store's redis URL, or None when jobs live in SQLite."""
    spec = option(settings, "job_store", "sqlite")
    return spec if spec.startswith(REDIS_SCHEMES) else None


def make_store(settings: Settings, instance: str | None = None, *, worker: int | None = None,
               lock_dir: bool = False):
    """instance: the server's id (flashhead.jobs.store.new_instance_id); its worker processes
    pass their server's, so that their claims belong to it, and their index as `worker`.
    None: a new one. lock_dir: the API process of a server on SQLite locks the data dir."""
    if url := redis_url(settings):
        from flashhead.jobs.redis import RedisJobStore
        return RedisJobStore(url, prefix=option(settings, "redis_prefix", "flashhead:"), instance=instance,
                             worker=worker, lease_s=option(settings, "job_lease_s", LEASE_S, float),
                             socket_timeout_s=settings.redis_socket_timeout_s)
    from flashhead.jobs.sqlite import SqliteJobStore
    return SqliteJobStore(Path(settings.data_dir) / "jobs.db", instance=instance, worker=worker,
                          lock_dir=lock_dir)


def make_storage(settings: Settings):
    data_dir = Path(settings.data_dir)
    if option(settings, "storage", "local") == "s3":
        from flashhead.storage.s3 import S3Storage
        storage = S3Storage(option(settings, "s3_bucket", "flashhead"), data_dir / "staging",
                            prefix=option(settings, "s3_prefix", "files/"),
                            endpoint_url=option(settings, "s3_endpoint_url", None),
                            region=option(settings, "s3_region", None))
    else:
        from flashhead.storage.local import LocalStorage
        storage = LocalStorage(data_dir / "files")
    storage.files_url = option(settings, "files_url", None)
    return storage
