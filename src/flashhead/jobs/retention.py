"""Retention: every stored thing has a lifetime (Settings), and a sweeper deletes what outlived it.

- finished jobs and their logs (job store, SQLite or Redis): job_retention_s after finishing,
  once their terminal hooks (webhook enqueue, metrics) have run;
- stored files, by kind (flashhead.storage.base.UPLOAD / RESULT): upload_retention_s,
  result_retention_s after they were stored (local disk or S3);
- staging (multipart uploads, bodies being received, `.part` copies) and partial files of
  renders and streams that died (data_dir/work, data_dir/streams): staging_retention_s after
  they were last touched.

The API process runs a Sweeper thread (every retention_sweep_s); `flashhead gc --data-dir D
[--dry-run]` runs one sweep by hand. The clock is injectable (tests). A result fetched after
its job or file expired is a 404 (NotFound), like one that never existed.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from flashhead.config import Settings
from flashhead.storage.base import RESULT, UPLOAD, Storage, mtime, remove_path

log = logging.getLogger("flashhead.retention")
PARTIAL_DIRS = ("work", "streams")       # under data_dir: per-job and per-stream scratch files
JOB_BATCH = 500


@dataclass
class SweepReport:
    jobs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    staging: list[str] = field(default_factory=list)     # paths, as text
    errors: list[str] = field(default_factory=list)

    def counts(self) -> dict:
        return {"jobs": len(self.jobs), "files": len(self.files), "staging": len(self.staging),
                "errors": len(self.errors)}


class Retention:
    def __init__(self, settings: Settings, store, storage: Storage, *,
                 clock: Callable[[], float] = time.time):
        self.settings, self.store, self.storage, self.clock = settings, store, storage, clock
        self.data_dir = Path(settings.data_dir)

    def sweep(self, *, dry_run: bool = False) -> SweepReport:
        """Find (and unless dry_run, delete) everything expired. A failing part (S3 down) is
        reported and the other parts still run."""
        report = SweepReport()
        for part in (self._jobs, self._files, self._staging):
            try:
                part(report, dry_run)
            except Exception as exc:  # noqa: BLE001 - one backend down must not stop the rest
                log.warning("retention sweep: %s failed: %s", part.__name__, exc)
                report.errors.append(f"{part.__name__.strip('_')}: {exc}")
        return report

    def _jobs(self, report: SweepReport, dry_run: bool) -> None:
        before = self.clock() - self.settings.job_retention_s
        while ids := self.store.expired_jobs(before, JOB_BATCH):
            report.jobs += ids
            if dry_run:
                return
            self.store.delete_jobs(ids)
            if len(ids) < JOB_BATCH:
                return

    def _files(self, report: SweepReport, dry_run: bool) -> None:
        t = self.clock()
        keys = self.storage.list_expired({UPLOAD: t - self.settings.upload_retention_s,
                                          RESULT: t - self.settings.result_retention_s})
        report.files += keys
        if not dry_run:
            for key in keys:
                self.storage.delete(key)

    def _staging(self, report: SweepReport, dry_run: bool) -> None:
        before = self.clock() - self.settings.staging_retention_s
        paths = self.storage.staging_expired(before)
        for name in PARTIAL_DIRS:
            folder = self.data_dir / name
            if folder.is_dir():
                paths += sorted(p for p in folder.iterdir() if _newest(p) < before)
        report.staging += [str(p) for p in paths]
        if not dry_run:
            for p in paths:
                remove_path(p)


def _newest(path: Path) -> float:
    """Last touch of a file, or of a folder and anything directly in it (a render still writing)."""
    if not path.is_dir():
        return mtime(path)
    return max([mtime(path), *(mtime(p) for p in path.iterdir())])


class Periodic:
    """A daemon thread calling `fn` every `interval_s` (0 = never) until stop(); a failing call
    is logged and the next one still runs."""

    def __init__(self, interval_s: float, fn: Callable[[], object], name: str):
        self.interval_s, self.fn, self.name = interval_s, fn, name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.interval_s > 0:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.fn()
            except Exception:  # noqa: BLE001 - a periodic task must survive one bad round
                log.exception("%s failed", self.name)


def sweeper(retention: Retention, interval_s: float) -> Periodic:
    """The API process's retention thread: a sweep every `interval_s`, logged when it deleted."""
    def sweep() -> None:
        counts = retention.sweep().counts()
        if any(counts.values()):
            log.info("retention sweep", extra=counts)
    return Periodic(interval_s, sweep, "retention")
