"""Build the job store and file storage a Settings names (shared by the API process and the
render worker processes, which must open the same ones)."""
from __future__ import annotations

from pathlib import Path

from flashhead.config import Settings


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def redis_url(settings: Settings) -> str | None:
    """The job store's redis URL, or None when jobs live in SQLite."""
    spec = settings.job_store
    return spec if spec.startswith(REDIS_SCHEMES) else None


def make_store(settings: Settings, instance: str | None = None, *, worker: int | None = None,
               lock_dir: bool = False):
    """instance: the server's id (flashhead.jobs.store.new_instance_id); its worker processes
    pass their server's, so that their claims belong to it, and their index as `worker`.
    None: a new one. lock_dir: the API process of a server on SQLite locks the data dir."""
    if url := redis_url(settings):
        from flashhead.jobs.redis import RedisJobStore
        return RedisJobStore(url, prefix=settings.redis_prefix, instance=instance,
                             worker=worker, lease_s=settings.job_lease_s,
                             socket_timeout_s=settings.redis_socket_timeout_s)
    from flashhead.jobs.sqlite import SqliteJobStore
    return SqliteJobStore(Path(settings.data_dir) / "jobs.db", instance=instance, worker=worker,
                          lock_dir=lock_dir)


def make_storage(settings: Settings):
    data_dir = Path(settings.data_dir)
    if settings.storage == "s3":
        from flashhead.storage.s3 import S3Storage
        storage = S3Storage(settings.s3_bucket, data_dir / "staging",
                            prefix=settings.s3_prefix,
                            endpoint_url=settings.s3_endpoint_url,
                            region=settings.s3_region)
    else:
        from flashhead.storage.local import LocalStorage
        storage = LocalStorage(data_dir / "files")
    storage.files_url = settings.files_url
    return storage
