"""Streams and live sessions across machines, through the job store's Redis (redis-py streams).

An engine node (`flashhead worker`) runs an EngineProcess as `serve` does and an EngineHost that
bridges it to Redis; an API node (`serve --no-worker`) opens sessions on it with RemoteEngines.
Keys (under the redis prefix):
  engines                   set of engine ids
  engine:{id}               its capacity, with a TTL the engine renews (gone = the engine is dead):
                            at each beat the capacity of its engine as now running, so a restart
                            that calibrated differently is what the API nodes admit against
  engine:{id}:stats         what the engine last published of itself (msgpack, same TTL): running
                            sessions, and cumulative histograms of step seconds and batch sizes
  engine:{id}:sessions      zset session id -> expiry (redis clock): the engine's taken slots.
                            The API reserves a slot atomically (RESERVE) and renews it (TOUCH); an
                            API node that dies stops renewing and the engine drops the session.
  key:{key id}:sessions     zset session id -> expiry: the API key's sessions on every API node
                            (engine_key_sessions caps them in RESERVE; expired entries do not count,
                            so a dead API node's sessions stop counting within engine_remote_ttl_s)
  engine:{id}:in            stream API -> engine: {sid, kind, data}: stream | live | audio | eos |
                            interrupt | pose | stop | close (capped by MAXLEN, with a TTL, deleted
                            when the engine node stops)
  session:{sid}:out         stream engine -> API: {kind, data} as relay.EngineLink's messages
                            (capped by MAXLEN, with a TTL, deleted when the API closes the session)
Payloads are msgpack. Admission is immediate: no engine with a free slot, or the key at its cap
-> CapacityExceeded. On the API node every Redis call made from the event loop is redis.asyncio:
short calls on a bounded pool (engine_remote_redis_connections), and each session's blocking
reads on a connection of its own, closed when the session ends; the synchronous client serves
only /health and /metrics, which run in the threadpool. Every client is closed at shutdown
(RemoteEngines.aclose, EngineHost.stop). Their connections carry a name in CLIENT LIST.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import uuid

import msgpack
import redis as redis_lib
import redis.asyncio as aioredis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from flashhead.config import Settings
from flashhead.engine.relay import FINAL, settle
from flashhead.engine.scheduler import error_payload
from flashhead.errors import BackendUnavailable, CapacityExceeded, EngineFailed, FlashheadError, LimitExceeded

log = logging.getLogger("flashhead.engine")
API_CLIENT = "flashhead-api"            # CLIENT SETNAME of an API node's pooled connections,
SESSION_CLIENT = "flashhead-api-session"   # of its sessions' own,
HOST_CLIENT = "flashhead-engine"        # ... and of an engine node's
STEP_BUCKETS = (.005, .01, .02, .05, .1, .2, .32, .5, 1, 2, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

# KEYS: engines set, the key's session zset. ARGV: prefix, session id, ttl seconds, per-key cap.
# -> {'key'} (the key is at its cap), {'full'} (no live engine has a free slot), or {'ok', engine
# id}: the live engine with the most free slots, one of them and one of the key's taken until
# now + ttl.
RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return {'key'} end
local best, best_free = nil, 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local cap = redis.call('GET', ARGV[1] .. 'engine:' .. id)
  if not cap then
    redis.call('SREM', KEYS[1], id)
  else
    local z = ARGV[1] .. 'engine:' .. id .. ':sessions'
    local free = tonumber(cap) - redis.call('ZCARD', z)
    if free > best_free then best, best_free = id, free end
  end
end
if not best then return {'full'} end
for _, z in ipairs({ARGV[1] .. 'engine:' .. best .. ':sessions', KEYS[2]}) do
  redis.call('ZADD', z, now + ttl, ARGV[2])
  redis.call('PEXPIRE', z, math.floor(ttl * 4000))
end
return {'ok', best}
"""
# KEYS: engine key, engine session zset, the key's session zset. ARGV: session id, ttl seconds.
# Renews the session's slots: 1; 0 when its engine is gone (its key expired); -1 when the slot
# is gone or expired (the session ended, or the engine dropped it as abandoned).
TOUCH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local until_s = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not until_s or tonumber(until_s) < now then return -1 end
for i = 2, 3 do
  redis.call('ZADD', KEYS[i], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[i], math.floor(tonumber(ARGV[2]) * 4000))
end
return 1
"""


def pack(payload) -> bytes:
    return msgpack.packb(payload, use_bin_type=True)


def unpack(data: bytes):
    return msgpack.unpackb(data, raw=False)


class Keys:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.engines = f"{prefix}engines"

    def engine(self, eid: str) -> str:
        return f"{self.prefix}engine:{eid}"

    def stats(self, eid: str) -> str:
        return f"{self.prefix}engine:{eid}:stats"

    def sessions(self, eid: str) -> str:
        return f"{self.prefix}engine:{eid}:sessions"

    def key_sessions(self, key: str) -> str:
        return f"{self.prefix}key:{key}:sessions"

    def inbox(self, eid: str) -> str:
        return f"{self.prefix}engine:{eid}:in"

    def out(self, sid: str) -> str:
        return f"{self.prefix}session:{sid}:out"


def _settings_url(settings: Settings) -> str:
    from flashhead.jobs.backends import redis_url

    url = redis_url(settings)
    if url is None:
        raise ValueError("remote engines need the Redis job store")
    return url


class Tally:
    """A cumulative histogram an engine node publishes: counts per bucket (the last one: above
    every bound), their sum."""

    def __init__(self, bounds: tuple):
        self.bounds, self.counts, self.sum = bounds, [0] * (len(bounds) + 1), 0.0

    def add(self, value: float) -> None:
        self.counts[next((i for i, b in enumerate(self.bounds) if value <= b), len(self.bounds))] += 1
        self.sum += value

    def as_dict(self) -> dict:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.sum}


# ---- the API node ------------------------------------------------------------------------------

class RemoteSession:
    """An admitted session on a remote engine: same interface as service.Session.

    A reader task moves the engine's messages from Redis into `queue` as they come, so that
    nothing is lost to the stream's MAXLEN; a live client that leaves more than max_unread chunks
    unread loses its session (as relay.Channel: limit_exceeded), its slots freed at once. The
    reader blocks on a Redis connection of its own, closed when it stops."""

    def __init__(self, engines: "RemoteEngines", eid: str, sid: str, key: str, kind: str):
        self.engines, self.eid, self.sid, self.key = engines, eid, sid, key
        self.reader = engines.reader()
        self.max_unread = engines.max_pending if kind == "live" else None
        self.queue: asyncio.Queue = asyncio.Queue()
        self.finished = self.closed = self.released = False
        self.ended = False                 # the engine sent its last message (or cannot send more)
        self.lost: str | None = None       # why the session cannot go on (seen by the heartbeat)
        self._unread = 0
        loop = asyncio.get_running_loop()
        self.beating, self.reading = loop.create_task(self._heartbeat()), loop.create_task(self._read())
        engines.sessions.add(self)

    async def _heartbeat(self) -> None:
        e, k = self.engines, self.engines.keys
        while not self.closed:
            await asyncio.sleep(e.ttl_s / 3)
            try:
                alive = await e.touch(keys=[k.engine(self.eid), k.sessions(self.eid), k.key_sessions(self.key)],
                                      args=[self.sid, e.ttl_s])
            except redis_lib.RedisError:
                continue
            if alive != 1:
                self.lost = ("the render engine node stopped while this session ran" if alive == 0 else
                             "the render engine dropped this session (its API node fell silent)")
                return

    async def _read(self) -> None:
        """The engine's messages, in order, until its last one or the session's close (within a
        read's block); what it sent before it stopped is delivered before the error saying so.
        Never cancelled: redis-py can swallow a cancellation that lands as a command starts
        (the task would then read on for ever), so it stops on its own and closes its connection."""
        try:
            await self._read_until_ended()
        finally:
            await self.reader.aclose()

    async def _read_until_ended(self) -> None:
        out, last = self.engines.keys.out(self.sid), "0-0"
        while not (self.ended or self.closed):
            try:
                resp = await self.reader.xread({out: last}, count=16, block=250)
            except redis_lib.RedisError:
                self._deliver("error", EngineFailed("lost contact with the shared Redis during this session"))
                return
            if not resp and self.lost:
                self._deliver("error", EngineFailed(self.lost))
            for last, fields in resp[0][1] if resp else ():
                self._deliver(fields[b"kind"].decode(), unpack(fields[b"data"]))
                if self.ended:
                    return

    def _deliver(self, kind: str, payload) -> None:
        self._unread += 1
        if kind == "event" and self.max_unread is not None and self._unread > self.max_unread:
            kind, payload = "error", LimitExceeded(
                f"the client left more than {self.max_unread} chunks unread; the session ended")
            self._release()
        self.ended = self.ended or kind in FINAL or (
            kind == "error" and (isinstance(payload, FlashheadError) or payload.get("fatal")))
        self.queue.put_nowait((kind, payload))

    async def get(self) -> tuple[str, object]:
        kind, payload = await self.queue.get()
        self._unread -= 1
        return settle(self, kind, payload)

    async def send(self, kind: str, payload=None) -> None:
        await self.engines.post(self.eid, self.sid, kind, payload)

    def interrupt(self, exc: FlashheadError) -> None:
        """End the session from the API side: the engine drops it and get() raises `exc` (after
        what was delivered before)."""
        self._release()
        self._deliver("error", exc)
        self.close()

    def close(self) -> None:
        """Idempotent: frees the slots and tells the engine to drop the session (in the
        background: a Redis that is slow or gone never holds the caller)."""
        if self.closed:
            return
        self.closed = True
        self.engines.sessions.discard(self)
        self.beating.cancel()                # the reader stops at its next read's end
        self._release()

    def _release(self) -> None:
        if not self.released:
            self.released = True
            self.engines.spawn(self.engines.release(self.eid, self.sid, self.key, tell_engine=not self.ended))


class RemoteEngines:
    """API side: admits a session on the engine node with the most free slots."""

    def __init__(self, settings: Settings):
        self.url = _settings_url(settings)
        self.keys = Keys(settings.redis_prefix)
        self.ttl_s = settings.engine_remote_ttl_s
        self.maxlen = settings.engine_remote_stream_maxlen
        self.max_pending = settings.engine_max_pending_chunks
        self.inbox_ttl_s = int(settings.engine_remote_stream_ttl_s)
        self.per_key = settings.engine_key_sessions
        self.retry_after_s = settings.engine_retry_after_s
        self.timeout_s = settings.redis_socket_timeout_s
        self.r = redis_lib.Redis.from_url(self.url, socket_timeout=self.timeout_s, client_name=API_CLIENT)  # threadpool
        self.aio = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(
            self.url, max_connections=settings.engine_remote_redis_connections, timeout=self.timeout_s,
            socket_timeout=self.timeout_s, client_name=API_CLIENT))
        self.reserve = self.aio.register_script(RESERVE)
        self.touch = self.aio.register_script(TOUCH)
        self.refused = 0
        self.sessions: set[RemoteSession] = set()          # open (not yet closed) sessions
        self._background: set[asyncio.Task] = set()

    def reader(self) -> aioredis.Redis:
        """A session's own connection for its blocking reads (opened at its first read): a client
        with a pool of its own, as redis-py's single-connection client can swallow the task's
        cancellation in a blocking read and read on."""
        return aioredis.Redis.from_url(self.url, max_connections=1, socket_timeout=self.timeout_s,
                                       client_name=SESSION_CLIENT)

    async def aclose(self) -> None:
        """At the API node's shutdown: its sessions closed (their slots released), then every
        connection of this node's clients."""
        tasks = [t for s in self.sessions for t in (s.beating, s.reading)]
        for session in list(self.sessions):
            session.close()
        await asyncio.gather(*tasks, *self._background, return_exceptions=True)
        await self.aio.aclose()
        self.r.close()

    async def open(self, kind: str, spec: dict, key_id: str | None) -> RemoteSession:
        sid, key = uuid.uuid4().hex, key_id or "anonymous"
        try:
            got = await self.reserve(keys=[self.keys.engines, self.keys.key_sessions(key)],
                                     args=[self.keys.prefix, sid, self.ttl_s, self.per_key])
        except redis_lib.RedisError as exc:
            raise BackendUnavailable("the shared Redis is unreachable; try again shortly") from exc
        if got[0] != b"ok":
            self.refused += 1
            raise CapacityExceeded(f"this key already runs {self.per_key} real-time sessions, its limit"
                                   if got[0] == b"key" else "every real-time session of the render engine "
                                   "nodes is in use; try again shortly", retry_after_s=self.retry_after_s)
        session = RemoteSession(self, got[1].decode(), sid, key, kind)
        try:
            await self.post(session.eid, sid, kind, spec)
        except BaseException:
            session.close()
            raise
        return session

    async def post(self, eid: str, sid: str, kind: str, payload=None) -> None:
        try:
            async with self.aio.pipeline(transaction=False) as p:
                self._to_inbox(p, eid, sid, kind, payload)
                await p.execute()
        except redis_lib.RedisError as exc:
            raise BackendUnavailable("the shared Redis is unreachable; try again shortly") from exc

    def _to_inbox(self, pipe, eid: str, sid: str, kind: str, payload=None) -> None:
        """A message for engine `eid`, in `pipe`. The inbox expires engine_remote_stream_ttl_s
        after its last message: the inbox of an engine node that died (a new id at each start)
        would otherwise keep what was sent to it, data: URIs of megabytes included, for ever."""
        inbox = self.keys.inbox(eid)
        pipe.xadd(inbox, {"sid": sid, "kind": kind, "data": pack(payload)}, maxlen=self.maxlen * 10,
                  approximate=True)
        pipe.expire(inbox, self.inbox_ttl_s)

    async def release(self, eid: str, sid: str, key: str, *, tell_engine: bool) -> None:
        """A session's slots free, its stream gone; the engine told to drop it if it still runs."""
        try:
            async with self.aio.pipeline(transaction=False) as p:
                if tell_engine:
                    self._to_inbox(p, eid, sid, "close")
                p.zrem(self.keys.sessions(eid), sid)
                p.zrem(self.keys.key_sessions(key), sid)
                p.delete(self.keys.out(sid))
                await p.execute()
        except redis_lib.RedisError:       # the slots expire on their own (engine_remote_ttl_s)
            log.warning("remote session release failed", extra={"sid": sid})

    def spawn(self, coro) -> None:
        """Runs `coro` on the event loop without awaiting it (kept referenced until it ends)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def engines(self) -> list[dict]:
        """From the threadpool (/health, /metrics): each live engine node as it last published
        itself: id, capacity, sessions (slots taken), and its stats when it published them."""
        ids = sorted(m.decode() for m in self.r.smembers(self.keys.engines))
        with self.r.pipeline(transaction=False) as p:
            for eid in ids:
                p.get(self.keys.engine(eid))
                p.zcard(self.keys.sessions(eid))
                p.get(self.keys.stats(eid))
            got = p.execute()
        out = []
        for eid, (cap, taken, stats) in zip(ids, zip(*[iter(got)] * 3)):
            if cap is not None:                # else: dead, its key expired
                out.append({"id": eid, "capacity": int(cap), "sessions": taken,
                            **(unpack(stats) if stats else {})})
        return out

    def health(self) -> dict:
        engines = self.engines()
        return {"up": bool(engines), "capacity": sum(e["capacity"] for e in engines),
                "sessions": sum(e["sessions"] for e in engines), "refused": self.refused,
                "remote": [{"id": e["id"], "capacity": e["capacity"], "sessions": e["sessions"],
                            "running": e.get("active"), "steps": _count(e.get("steps")),
                            "step_seconds_mean": _mean(e.get("steps")),
                            "batch_size_mean": _mean(e.get("batches"))} for e in engines]}


def _count(tally: dict | None) -> int | None:
    return sum(tally["counts"]) if tally else None


def _mean(tally: dict | None) -> float | None:
    n = _count(tally)
    return round(tally["sum"] / n, 4) if n else None


# ---- the engine node ---------------------------------------------------------------------------

class EngineHost:
    """Engine side: takes sessions from this engine's Redis inbox into a local EngineProcess."""

    def __init__(self, settings: Settings):
        url = _settings_url(settings)
        self.settings = settings
        self.runner = None
        self.keys = Keys(settings.redis_prefix)
        self.ttl_s = settings.engine_remote_ttl_s
        self.maxlen = settings.engine_remote_stream_maxlen
        # A raw (WebRTC) session's chunk is a whole I420 frame (~400 KB): its stream keeps no more
        # chunks than the API would hold for it unread.
        self.raw_maxlen = min(self.maxlen, settings.engine_max_pending_chunks)
        self.maxlens: dict[str, int] = {}
        self.eid = uuid.uuid4().hex[:16]
        self.aio = aioredis.Redis.from_url(url, client_name=HOST_CLIENT)
        self.channels: dict = {}            # session id -> relay.Channel
        self.pumps: dict = {}
        self.active = 0                     # sessions the local engine runs (its last beat)
        self.steps, self.batches = Tally(STEP_BUCKETS), Tally(BATCH_BUCKETS)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="engine-host",
                                        daemon=True)

    def observe(self, beat: dict) -> None:
        """The local engine's heartbeat (EngineProcess on_beat, its reader thread): published
        with this engine's key, for the API nodes' /health and /metrics."""
        with self._lock:
            self.active = beat["active"]
            for s in beat["steps"]:
                self.steps.add(s)
            for n in beat.get("batches", ()):
                self.batches.add(n)

    def stats(self) -> dict:
        with self._lock:
            return {"active": self.active, "steps": self.steps.as_dict(), "batches": self.batches.as_dict()}

    def start(self, runner) -> "EngineHost":
        """Once `runner` (an EngineProcess) is ready: offers its engine's capacity to the API nodes."""
        self.runner = runner
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:          # started
            self._thread.join(timeout=5)

    async def _main(self) -> None:
        beat = asyncio.create_task(self._forever(self._beat, None))
        # the reader is never cancelled: redis-py can swallow a cancel mid-XREAD and read on (its
        # connection then outlives the host); it ends after its current read (block 1 s) instead
        reader = asyncio.create_task(self._forever(self._read, "0-0"))
        while not self._stop.is_set():
            await asyncio.sleep(0.2)
        sids, tasks = list(self.pumps), [beat, *self.pumps.values()]
        beat.cancel()
        for sid in sids:
            self._drop(sid)                 # a pump whose cancel redis-py swallows sees it was dropped
        await asyncio.gather(reader, *tasks, return_exceptions=True)
        try:
            if sids:                            # the cancelled pumps' slots
                await self.aio.zrem(self.keys.sessions(self.eid), *sids)
            await self.aio.delete(self.keys.engine(self.eid), self.keys.stats(self.eid), self.keys.inbox(self.eid))
            await self.aio.srem(self.keys.engines, self.eid)
        finally:
            await self.aio.aclose()

    async def _forever(self, step, state) -> None:
        """step(state) -> state, again and again until stop(); Redis unreachable: retried after a second."""
        while not self._stop.is_set():
            try:
                state = await step(state)
            except redis_lib.RedisError:
                log.warning("engine host: redis unreachable; retrying", exc_info=True)
                await asyncio.sleep(1.0)

    async def _beat(self, _state) -> None:
        """Renews this engine's key, with the capacity its running engine reported ready with
        (configured, or calibrated at its last start), while it runs; drops sessions whose API
        node stopped renewing them."""
        link = self.runner.link
        if link is not None and not link.closed:
            ttl_ms = int(self.ttl_s * 1000)
            async with self.aio.pipeline(transaction=False) as p:
                p.set(self.keys.engine(self.eid), link.info["capacity"], px=ttl_ms)
                p.set(self.keys.stats(self.eid), pack(self.stats()), px=ttl_ms)
                p.sadd(self.keys.engines, self.eid)
                await p.execute()
        now = _seconds(await self.aio.time())
        slots = self.keys.sessions(self.eid)
        for sid in await self.aio.zrangebyscore(slots, "-inf", now):
            sid = sid.decode()
            log.info("session abandoned by its API node", extra={"sid": sid})
            self._drop(sid)
            await self.aio.delete(self.keys.out(sid))       # nobody will read it
            await self.aio.zrem(slots, sid)                 # the slot is free only now
        await asyncio.sleep(self.ttl_s / 3)

    async def _read(self, last: str) -> str:
        """The inbox's next messages after `last`; returns the last one handled."""
        inbox = self.keys.inbox(self.eid)
        resp = await self.aio.xread({inbox: last}, count=64, block=1000)
        for _, entries in resp or ():
            for last, fields in entries:
                await self._handle(fields[b"sid"].decode(), fields[b"kind"].decode(), unpack(fields[b"data"]))
            await self.aio.xtrim(inbox, minid=last, approximate=True)
        return last

    async def _handle(self, sid: str, kind: str, payload) -> None:
        if kind in ("stream", "live"):
            if payload.get("output") == "raw":
                self.maxlens[sid] = self.raw_maxlen
            link = self.runner.link
            try:
                if link is None:
                    raise OSError("no engine")
                self.channels[sid] = link.open(kind, payload)
            except (FlashheadError, OSError) as exc:
                failed = exc if isinstance(exc, FlashheadError) else \
                    EngineFailed("the render engine of this node is restarting")
                await self._publish(sid, "error", error_payload(failed, fatal=True))
                await self.aio.zrem(self.keys.sessions(self.eid), sid)
                self.maxlens.pop(sid, None)
                return
            self.pumps[sid] = asyncio.create_task(self._pump(sid, self.channels[sid]))
        elif kind == "close":
            self._drop(sid)
            await self.aio.delete(self.keys.out(sid))     # what its pump published meanwhile
            await self.aio.zrem(self.keys.sessions(self.eid), sid)
        elif (channel := self.channels.get(sid)) is not None:
            try:
                channel.send(kind, payload)
            except OSError:
                pass                          # the local engine died: the pump reports it

    def _drop(self, sid: str) -> None:
        channel = self.channels.pop(sid, None)
        if channel is not None:
            channel.close()
        pump = self.pumps.pop(sid, None)
        if pump is not None:
            pump.cancel()

    async def _pump(self, sid: str, channel) -> None:
        """The engine's messages for `sid` to its stream. A pump that ends by itself frees the
        session's slot; a cancelled one (_drop, shutdown) leaves that to its canceller: a Redis
        call made by a cancelled task can hang in redis-py, holding its connection. redis-py can
        also swallow the cancel (one landing as a command starts), so after each publish a pump
        checks that it was not dropped meanwhile: otherwise it would wait on its closed channel
        with nothing left to wake it or hold it, until the garbage collector closed it."""
        cancelled = False
        me = asyncio.current_task()
        try:
            while True:
                try:
                    kind, payload = await channel.get()
                except FlashheadError as exc:
                    await self._publish(sid, "error", error_payload(exc, fatal=True))
                    return
                if kind == "error":
                    payload = error_payload(payload, fatal=False)
                await self._publish(sid, kind, payload)
                if self.pumps.get(sid) is not me:           # dropped while it published:
                    cancelled = True
                    await self.aio.delete(self.keys.out(sid))  # what it published after the drop
                    return
                if kind in FINAL:
                    return
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            self.channels.pop(sid, None)
            self.pumps.pop(sid, None)
            self.maxlens.pop(sid, None)
            if not cancelled:
                await self.aio.zrem(self.keys.sessions(self.eid), sid)

    async def _publish(self, sid: str, kind: str, payload) -> None:
        out = self.keys.out(sid)
        async with self.aio.pipeline(transaction=False) as p:
            p.xadd(out, {"kind": kind, "data": pack(payload)}, maxlen=self.maxlens.get(sid, self.maxlen),
                   approximate=False)
            p.expire(out, int(self.settings.engine_remote_stream_ttl_s))
            await p.execute()


def _seconds(t) -> float:
    return t[0] + t[1] / 1e6


def remote_metrics(remote: RemoteEngines):
    """An API node's /metrics (collected in the threadpool): the engine nodes' capacity and
    sessions in total, and per engine node with its step seconds and batch sizes."""
    engines = remote.engines()
    for name, doc, value in (
            ("flashhead_engine_capacity", "Real-time sessions the engine nodes admit",
             sum(e["capacity"] for e in engines)),
            ("flashhead_engine_sessions", "Real-time sessions in flight on the engine nodes",
             sum(e["sessions"] for e in engines)),
            ("flashhead_engine_up", "1 while a render engine node is live", int(bool(engines)))):
        yield GaugeMetricFamily(name, doc, value=value)
    yield CounterMetricFamily("flashhead_engine_refused", "Sessions this API node refused at capacity",
                              value=remote.refused)
    per_engine = [("flashhead_remote_engine_capacity", "Real-time sessions the engine node admits", "capacity"),
                  ("flashhead_remote_engine_sessions", "Real-time sessions in flight on the engine node", "sessions"),
                  ("flashhead_remote_engine_running", "Sessions the engine node's scheduler runs", "active")]
    for name, doc, field in per_engine:
        family = GaugeMetricFamily(name, doc, labels=["engine"])
        for e in engines:
            if e.get(field) is not None:
                family.add_metric([e["id"]], e[field])
        yield family
    for name, doc, field in (("flashhead_remote_engine_step_seconds", "One session step in the engine node", "steps"),
                             ("flashhead_remote_engine_batch_size", "Sessions stepped together in one batch",
                              "batches")):
        family = HistogramMetricFamily(name, doc, labels=["engine"])
        for e in engines:
            if e.get(field):
                family.add_metric([e["id"]], _buckets(e[field]), sum_value=e[field]["sum"])
        yield family


def _buckets(tally: dict) -> list[tuple[str, float]]:
    """A published Tally as Prometheus' cumulative (le, count) pairs."""
    bounds = [floatToGoString(b) for b in tally["bounds"]] + ["+Inf"]
    return list(zip(bounds, itertools.accumulate(tally["counts"])))
