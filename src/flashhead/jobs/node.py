"""`flashhead worker`: render workers on a machine of their own (the several-machines setup).

A worker node is a server without the API: it has its own instance id and lease in the shared
Redis job store, runs `--workers` render worker processes (ProcessWorkerPool, exactly as
`flashhead serve` does) that claim queue jobs submitted to any API node, and renews its lease
and sweeps for other servers' orphans (JobQueue's maintenance thread). Terminal hooks
(webhooks, metrics) are left to the API nodes (`flashhead serve --no-worker`, or any server).
A node that dies (SIGKILL, power loss) takes its render processes with it (PR_SET_PDEATHSIG);
its lease runs out and a live server re-queues its running job once (a job already re-run is
failed with worker_crashed), as for any server on Redis (flashhead.jobs.queue).

It also runs a render engine (EngineProcess, as `serve` does) that takes /stream requests and
live realtime sessions from any API node through Redis (flashhead.engine.remote.EngineHost).
"""
from __future__ import annotations

import logging
import threading

from flashhead.config import Settings
from flashhead.engine.process import EngineProcess
from flashhead.engine.remote import EngineHost
from flashhead.errors import BackendUnavailable
from flashhead.jobs.backends import make_store, redis_url
from flashhead.jobs.processes import ProcessWorkerPool
from flashhead.jobs.queue import JobQueue

log = logging.getLogger("flashhead.workers")


def check_shared(settings: Settings) -> None:
    """API nodes (`serve --no-worker`) and worker nodes must share the Redis job store and S3."""
    if redis_url(settings) is None:
        raise BackendUnavailable("API nodes and workers on separate machines need a shared Redis job store: "
                                 "--job-store redis://HOST:6379/0 (or FLASHHEAD_JOB_STORE)", field="job_store")
    if settings.storage != "s3":
        raise BackendUnavailable("API nodes and workers on separate machines need shared S3 storage: "
                                 "--storage s3 (or FLASHHEAD_STORAGE) and the FLASHHEAD_S3_* settings",
                                 field="storage")


def run_worker_node(settings: Settings, processes: int, stop: threading.Event) -> None:
    """Until `stop` is set; raises RuntimeError when a render worker cannot start."""
    check_shared(settings)
    queue = JobQueue(make_store(settings), dispatch=False)
    queue.recover()
    queue.start()                    # lease heartbeat, orphan sweep, deadlines
    host = EngineHost(settings)
    engine = EngineProcess(settings, on_beat=host.observe).start()
    pool = ProcessWorkerPool(queue, settings, processes, engine=engine.jobs)     # they render in the engine
    pool.start()
    try:
        pool.wait_ready()
        engine.wait_ready()
        host.start(engine)          # publishes the capacity of the engine running at each beat
        log.info("worker node ready", extra={"instance": queue.store.instance, "workers": processes,
                                             "renderer": settings.renderer})
        while not stop.wait(1.0):
            if pool.error or engine.error:
                raise RuntimeError(pool.error or engine.error)
    finally:
        host.stop()
        engine.stop()
        pool.stop()
        queue.stop()
