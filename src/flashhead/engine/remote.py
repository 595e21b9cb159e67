"""Streams and live sessions across machines, through the job store's Redis (redis-py streams).

An engine node (`flashhead worker`) runs an EngineProcess as `serve` does and an EngineHost that
bridges it to Redis; an API node (`serve --no-worker`) opens sessions on it with RemoteEngines.
Keys (under the redis prefix):
  engines                   set of engine ids
  engine:{id}               its capacity, with a TTL the engine renews (gone = the engine is dead)
  engine:{id}:sessions      zset session id -> expiry (redis clock): the engine's taken slots.
                            The API reserves a slot atomically (RESERVE) and renews it (TOUCH); an
                            API node that dies stops renewing and the engine drops the session.
  engine:{id}:in            stream API -> engine: {sid, kind, data}: stream | live | audio | eos |
                            interrupt | pose | stop | close (capped by MAXLEN)
  session:{sid}:out         stream engine -> API: {kind, data} as relay.EngineLink's messages
                            (capped by MAXLEN, with a TTL, deleted when the API closes the session)
Payloads are msgpack. Admission is immediate: no engine with a free slot -> CapacityExceeded.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import uuid

import msgpack
import redis as redis_lib
import redis.asyncio as aioredis

from flashhead.config import Settings
from flashhead.engine.admission import Admission
from flashhead.engine.relay import FINAL, settle
from flashhead.engine.scheduler import error_payload
from flashhead.errors import BackendUnavailable, CapacityExceeded, EngineFailed, FlashheadError

log = logging.getLogger("flashhead.engine")

# Picks the live engine with the most free slots and takes one for ARGV[2] until now + ARGV[3].
RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
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
if not best then return false end
local z = ARGV[1] .. 'engine:' .. best .. ':sessions'
redis.call('ZADD', z, now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', z, math.floor(tonumber(ARGV[3]) * 4000))
return best
"""
# Renews the session's slot: 1; 0 when its engine is gone (its key expired); -1 when the slot
# is gone or expired (the session ended, or the engine dropped it as abandoned).
TOUCH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local until_s = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not until_s or tonumber(until_s) < now then return -1 end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[2], math.floor(tonumber(ARGV[2]) * 4000))
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

    def sessions(self, eid: str) -> str:
        return f"{self.prefix}engine:{eid}:sessions"

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


# ---- the API node ------------------------------------------------------------------------------

class RemoteSession:
    """An admitted session on a remote engine: same interface as service.Session."""

    def __init__(self, engines: "RemoteEngines", eid: str, sid: str, ticket):
        self.engines, self.eid, self.sid, self.ticket = engines, eid, sid, ticket
        self.last_id = "0-0"
        self.finished = self.closed = False
        self.lost: str | None = None       # why the session cannot go on (seen by the heartbeat)
        self.beat = asyncio.get_running_loop().create_task(self._heartbeat())

    async def _heartbeat(self) -> None:
        e = self.engines
        while not self.closed:
            await asyncio.sleep(e.ttl_s / 3)
            try:
                alive = await e.touch(keys=[e.keys.engine(self.eid), e.keys.sessions(self.eid)],
                                      args=[self.sid, e.ttl_s])
            except redis_lib.RedisError:
                continue
            if alive != 1:
                self.lost = ("the render engine node stopped while this session ran" if alive == 0 else
                             "the render engine dropped this session (its API node fell silent)")
                return

    async def get(self) -> tuple[str, object]:
        e = self.engines
        while True:          # what the engine sent before it stopped is delivered first
            try:
                resp = await e.aio.xread({e.keys.out(self.sid): self.last_id}, count=1, block=250)
            except redis_lib.RedisError as exc:
                self.finished = True
                raise EngineFailed("lost contact with the shared Redis during this session") from exc
            if resp:
                break
            if self.lost:
                self.finished = True
                raise EngineFailed(self.lost)
        self.last_id, fields = resp[0][1][0]
        return settle(self, fields[b"kind"].decode(), unpack(fields[b"data"]))

    def send(self, kind: str, payload=None) -> None:
        self.engines.post(self.eid, self.sid, kind, payload)

    def close(self) -> None:
        """Idempotent: frees the slot at once and tells the engine to drop the session."""
        if self.closed:
            return
        self.closed = True
        self.beat.cancel()
        self.ticket.release()
        e = self.engines
        try:
            if not self.finished:
                e.post(self.eid, self.sid, "close")
            e.r.zrem(e.keys.sessions(self.eid), self.sid)
            e.r.delete(e.keys.out(self.sid))
        except (redis_lib.RedisError, BackendUnavailable):
            log.warning("remote session close failed", extra={"sid": self.sid})


class RemoteEngines:
    """API side: admits a session on the engine node with the most free slots."""

    def __init__(self, settings: Settings):
        url = _settings_url(settings)
        self.keys = Keys(settings.redis_prefix)
        self.ttl_s = settings.engine_remote_ttl_s
        self.maxlen = settings.engine_remote_stream_maxlen
        self.r = redis_lib.Redis.from_url(url, socket_timeout=settings.redis_socket_timeout_s)
        self.aio = aioredis.Redis.from_url(url)
        self.reserve = self.r.register_script(RESERVE)
        self.touch = self.aio.register_script(TOUCH)
        # The per-key cap holds per API node; the global capacity is the engines' (in Redis).
        self.admission = Admission(10**9, settings.engine_key_sessions, settings.engine_retry_after_s)
        self.retry_after_s = settings.engine_retry_after_s

    def open(self, kind: str, spec: dict, key_id: str | None) -> RemoteSession:
        ticket = self.admission.acquire(key_id)
        try:
            sid = uuid.uuid4().hex
            try:
                eid = self.reserve(keys=[self.keys.engines], args=[self.keys.prefix, sid, self.ttl_s])
            except redis_lib.RedisError as exc:
                raise BackendUnavailable("the shared Redis is unreachable; try again shortly") from exc
            if eid is None:
                raise CapacityExceeded("every real-time session of the render engine nodes is in use; "
                                       "try again shortly", retry_after_s=self.retry_after_s)
            eid = eid.decode()
            self.post(eid, sid, kind, spec)       # if this fails, the unrenewed slot expires
            return RemoteSession(self, eid, sid, ticket)
        except BaseException:
            ticket.release()
            raise

    def post(self, eid: str, sid: str, kind: str, payload=None) -> None:
        try:
            self.r.xadd(self.keys.inbox(eid), {"sid": sid, "kind": kind, "data": pack(payload)},
                        maxlen=self.maxlen * 10, approximate=True)
        except redis_lib.RedisError as exc:
            raise BackendUnavailable("the shared Redis is unreachable; try again shortly") from exc


# ---- the engine node ---------------------------------------------------------------------------

class EngineHost:
    """Engine side: takes sessions from this engine's Redis inbox into a local EngineProcess."""

    def __init__(self, settings: Settings, runner, capacity: int):
        url = _settings_url(settings)
        self.settings, self.runner, self.capacity = settings, runner, capacity
        self.keys = Keys(settings.redis_prefix)
        self.ttl_s = settings.engine_remote_ttl_s
        self.maxlen = settings.engine_remote_stream_maxlen
        # A raw (WebRTC) session's chunk is a whole I420 frame (~400 KB): its stream keeps no more
        # chunks than the API would hold for it unread.
        self.raw_maxlen = min(self.maxlen, settings.engine_max_pending_chunks)
        self.maxlens: dict[str, int] = {}
        self.eid = uuid.uuid4().hex[:16]
        self.aio = aioredis.Redis.from_url(url)
        self.channels: dict = {}            # session id -> relay.Channel
        self.pumps: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="engine-host",
                                        daemon=True)

    def start(self) -> "EngineHost":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    async def _main(self) -> None:
        tasks = [asyncio.create_task(self._forever(self._beat, None)),
                 asyncio.create_task(self._forever(self._read, "0-0"))]
        while not self._stop.is_set():
            await asyncio.sleep(0.2)
        for t in tasks:
            t.cancel()
        await self.aio.delete(self.keys.engine(self.eid))
        await self.aio.srem(self.keys.engines, self.eid)

    @staticmethod
    async def _forever(step, state) -> None:
        """step(state) -> state, again and again; Redis unreachable: retried after a second."""
        while True:
            try:
                state = await step(state)
            except redis_lib.RedisError:
                log.warning("engine host: redis unreachable; retrying", exc_info=True)
                await asyncio.sleep(1.0)

    async def _beat(self, _state) -> None:
        """Renews this engine's key while its local engine runs; drops sessions whose API node
        stopped renewing them."""
        link = self.runner.link
        if link is not None and not link.closed:
            await self.aio.set(self.keys.engine(self.eid), self.capacity, px=int(self.ttl_s * 1000))
            await self.aio.sadd(self.keys.engines, self.eid)
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
                if kind in FINAL:
                    return
        finally:
            self.channels.pop(sid, None)
            self.pumps.pop(sid, None)
            self.maxlens.pop(sid, None)
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
