"""What the API process holds of the engine: the engine runner (process or thread), admission,
and the engine's metrics. Routes call `open` and talk to the returned Session."""
from __future__ import annotations

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from flashhead.config import Settings
from flashhead.engine.admission import Admission, Ticket
from flashhead.engine.process import EngineProcess, EngineThread, capacity_of
from flashhead.engine.relay import Channel
from flashhead.engine.remote import BATCH_BUCKETS, STEP_BUCKETS, remote_metrics
from flashhead.errors import BackendUnavailable, FlashheadError, ShuttingDown


class Session:
    """One admitted session: its capacity ticket and its channel to the engine."""

    def __init__(self, ticket: Ticket, channel: Channel, open_sessions: set):
        self.ticket, self.channel, self.open_sessions = ticket, channel, open_sessions
        open_sessions.add(self)

    async def get(self) -> tuple[str, object]:
        return await self.channel.get()

    async def send(self, kind: str, payload=None) -> None:
        """Async as a RemoteSession's, whose send awaits Redis. An engine that just died (its
        pipe broken) drops the input: its supervisor fails every session (ENGINE_FAILED, from
        get()) a moment later, and the client must not see an internal error first."""
        try:
            self.channel.send(kind, payload)
        except OSError:
            pass

    def interrupt(self, exc: FlashheadError) -> None:
        """End the session from the API side: get() raises `exc` (after what came before)."""
        self.channel.interrupt(exc)
        self.close()

    def close(self) -> None:
        """Idempotent: frees the slot at once and tells the engine to drop the session."""
        self.open_sessions.discard(self)
        self.channel.close()
        self.ticket.release()


class EngineService:
    def __init__(self, settings: Settings, registry=None):
        self.settings = settings
        self.admission = Admission(capacity_of(settings), settings.engine_key_sessions,
                                   settings.engine_retry_after_s)
        self.runner: EngineProcess | EngineThread | None = None
        self.absent: str | None = None       # why this node runs no engine (an API-only node)
        self.remote = None                   # an API node's RemoteEngines (engines on other machines)
        self.sessions: set[Session] = set()      # open sessions of this node's own engine
        self.stopping = False                    # set by interrupt_all: opens refused
        self.process_sessions: list[int] = []   # the CPU pool: sessions pinned to each render process
        self.process_replacements = 0           # the CPU pool: render processes that died or hung
        self.capacity_info: dict = {"source": "configured" if settings.engine_capacity_mode == "configured"
                                    else "calibrating"}          # until the engine is ready
        self.step_seconds = Histogram("flashhead_engine_step_seconds", "One session step (render + encode "
                                      "one chunk) in the engine", registry=registry, buckets=STEP_BUCKETS)
        self.batch_size = Histogram("flashhead_engine_batch_size", "Sessions stepped together in one "
                                    "batch (neural renderers)", registry=registry, buckets=BATCH_BUCKETS)
        if registry is not None:
            registry.register(_EngineCollector(self))

    def start_process(self) -> None:
        self.runner = EngineProcess(self.settings, on_beat=self._beat, on_ready=self._ready).start()

    def start_thread(self, engines, storage) -> None:
        self.runner = EngineThread(engines, storage, self.settings, on_beat=self._beat, on_ready=self._ready)

    def _ready(self, info: dict) -> None:
        """At each engine start: admit what it says it holds (configured or calibrated)."""
        self.admission.capacity = info["capacity"]
        self.capacity_info = info

    def _beat(self, beat: dict) -> None:
        self.process_sessions = beat.get("processes", [])
        self.process_replacements += beat.get("replaced", 0)
        for s in beat["steps"]:
            self.step_seconds.observe(s)
        for n in beat.get("batches", ()):
            self.batch_size.observe(n)

    def wait_ready(self) -> None:
        self.runner.wait_ready()

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.stop()

    @property
    def up(self) -> bool:
        link = self.runner.link if self.runner is not None else None
        return bool(link and not link.closed)

    def health(self) -> dict:
        if self.remote is not None:
            return self.remote.health()
        return {"up": self.up, "capacity": self.admission.capacity, "sessions": self.admission.in_flight,
                "restarts": getattr(self.runner, "restarts", 0), "capacity_source": self.capacity_info["source"],
                **({"calibration": self.capacity_info["calibration"]} if "calibration" in self.capacity_info else {})}

    @property
    def error(self) -> str | None:
        return getattr(self.runner, "error", None)

    async def open(self, kind: str, spec: dict, key_id: str | None) -> Session:
        """From the event loop. Raises CapacityExceeded at once when no slot is free."""
        if self.stopping:
            raise ShuttingDown()
        if self.remote is not None:
            return await self.remote.open(kind, spec, key_id)
        if self.absent:
            raise BackendUnavailable(self.absent)
        link = self.runner.link if self.runner is not None else None
        if link is None or link.closed:
            raise BackendUnavailable("the render engine is starting; try again in a few seconds")
        ticket = self.admission.acquire(key_id)
        try:
            return Session(ticket, link.open(kind, spec), self.sessions)
        except BaseException:
            ticket.release()
            raise

    def interrupt_all(self) -> int:
        """From the event loop, as the server stops: every open session of this API node ends
        with ShuttingDown, and so does every later open(). Returns how many ended."""
        self.stopping = True
        sessions = list(self.remote.sessions if self.remote is not None else self.sessions)
        for session in sessions:
            session.interrupt(ShuttingDown())
        return len(sessions)


class _EngineCollector:
    def __init__(self, service: EngineService):
        self.service = service

    def collect(self):
        s = self.service
        if s.remote is not None:            # an API node: the engine nodes', read from Redis
            yield from remote_metrics(s.remote)
        else:
            yield from self._local()

    def _local(self):
        s = self.service
        for name, doc, value in (
                ("flashhead_engine_capacity", "Real-time sessions the engine admits", s.admission.capacity),
                ("flashhead_engine_sessions", "Real-time sessions in flight", s.admission.in_flight),
                ("flashhead_engine_up", "1 while the render engine is running", int(s.up)),
                ("flashhead_engine_capacity_calibrated", "1 when the capacity was measured at the engine's "
                 "start (engine_capacity_mode=calibrate)", int(s.capacity_info["source"] == "calibrated"))):
            yield GaugeMetricFamily(name, doc, value=value)
        steps = [c["step_s"] for c in s.capacity_info.get("calibration", [])]
        yield GaugeMetricFamily("flashhead_engine_calibration_step_seconds", "Calibration: mean wall seconds "
                                "per live chunk step at the engine's start (0: not calibrated)",
                                value=sum(steps) / len(steps) if steps else 0.0)
        per = GaugeMetricFamily("flashhead_engine_process_sessions", "Sessions and jobs pinned to each "
                                 "render process of the CPU engine's pool", labels=["process"])
        for i, n in enumerate(s.process_sessions):
            per.add_metric([str(i)], n)
        yield per
        yield CounterMetricFamily("flashhead_engine_refused", "Sessions refused at capacity", value=s.admission.refused)
        yield CounterMetricFamily("flashhead_engine_restarts", "Render engine restarts",
                                  value=getattr(s.runner, "restarts", 0))
        yield CounterMetricFamily("flashhead_engine_process_replacements", "Render processes of the CPU "
                                  "engine's pool that died or hung and were replaced (the engine stayed)",
                                  value=s.process_replacements)
