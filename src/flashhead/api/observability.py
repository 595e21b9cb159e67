"""Structured JSON logs carrying the request id, and Prometheus metrics."""
from __future__ import annotations

import contextvars
import json
import logging
import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_STD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra=` fields and the current request id are included."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "msg": record.getMessage()}
        rid = request_id_var.get()
        if rid:
            out["request_id"] = rid
        out.update({k: v for k, v in vars(record).items() if k not in _STD and not k.startswith("_")})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("flashhead")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class Metrics:
    """One registry per app, so tests can build many apps in one process."""

    def __init__(self, store=None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.http = Counter("flashhead_http_requests_total", "HTTP requests",
                            ["method", "route", "status"], registry=r)
        self.http_latency = Histogram("flashhead_http_request_seconds", "HTTP latency", ["route"],
                                      registry=r, buckets=(.002, .005, .01, .025, .05, .1, .25, 1, 5, 30))
        self.errors = Counter("flashhead_errors_total", "Errors returned or jobs failed",
                              ["error_type"], registry=r)
        self.jobs = Counter("flashhead_jobs_total", "Jobs reaching a terminal state",
                            ["endpoint", "state"], registry=r)
        self.job_seconds = Histogram("flashhead_job_duration_seconds", "Job run time (start to end)",
                                     ["endpoint"], registry=r,
                                     buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800))
        self.queue_wait = Histogram("flashhead_queue_wait_seconds", "Submit to start", registry=r,
                                    buckets=(.1, .5, 1, 5, 10, 30, 60, 300, 1800))
        self.webhooks = Counter("flashhead_webhook_deliveries_total", "Webhook attempts", ["outcome"],
                                registry=r)
        if store is not None:
            r.register(_StoreCollector(store))


class _StoreCollector:
    """Queue depth and running jobs, read from the store at scrape time."""

    def __init__(self, store):
        self.store = store

    def collect(self):
        yield GaugeMetricFamily("flashhead_queue_depth", "Jobs waiting", value=self.store.queue_depth())
        yield GaugeMetricFamily("flashhead_jobs_running", "Jobs running", value=self.store.running_count())


class RequestContextMiddleware:
    """Pure ASGI: sets the request id (X-Request-Id in or a new one), logs one line per request,
    counts it. Pure ASGI so that SSE bodies stream untouched."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics
        self.log = logging.getLogger("flashhead.http")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        token = request_id_var.set(rid)
        t0, status = time.perf_counter(), [500]

        async def _send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", rid.encode()))
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            dt = time.perf_counter() - t0
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.http.labels(scope["method"], route, str(status[0])).inc()
            self.metrics.http_latency.labels(route).observe(dt)
            self.log.info("request", extra={"method": scope["method"], "path": scope["path"],
                                            "status": status[0], "ms": round(dt * 1000, 2)})
            request_id_var.reset(token)
