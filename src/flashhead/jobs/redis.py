"""Redis job store (redis-py): for several servers (API processes) sharing one queue.

Layout under a key prefix: `job:{id}` hash, `queue` sorted set (score = priority, then
submit order), `deadlines` sorted set, `running` set, `logs:{id}` list, `seq` counter,
`terminal` list (jobs whose terminal hooks have not run yet; see take_terminal),
`terminal:processing:{instance}` lists (jobs handed to that server's hooks, not yet marked),
`terminal:processors` set (the instances that have such a list),
`alive:{instance}` one key per live server, with a TTL of LEASE_S (see heartbeat).
Every state change is one Lua script, so it is atomic.

Ownership: claim() writes the claiming server's instance id into the job's `owner` field.
recover() (at start-up and every ORPHAN_SWEEP_S) takes back only the running jobs whose
owner's `alive:` key has expired, so a server that starts or sweeps never touches the jobs
another live server is rendering. If a server stalls for longer than LEASE_S its job may be
re-run elsewhere; whichever run finishes first sets the result (finish is once-only).
A dead server's `terminal:processing:` list goes back to `terminal` the same way, so its
hooks run on a live server.
"""
from __future__ import annotations

import json

import redis as redis_lib

from flashhead.jobs.state import JobState, Priority
from flashhead.jobs.store import (LEASE_S, MAX_ATTEMPTS, TIMEOUT_TYPE, WORKER_CRASHED, CancelOutcome, Job,
                                  LogEntry, NewJob, new_instance_id, now)

_SEQ_SPAN = 2 ** 40   # score = priority * span + seq keeps "priority, then order"
SOCKET_TIMEOUT_S = 5.0                # as redis-py 8 defaults; Settings.redis_socket_timeout_s

_CLAIM = """
local ids = redis.call('ZRANGE', KEYS[1], 0, 63)
for _, id in ipairs(ids) do
  local k = ARGV[2] .. id
  local dl = redis.call('HGET', k, 'deadline')
  local cancel = redis.call('HGET', k, 'cancel_requested')
  if (not dl or tonumber(dl) > tonumber(ARGV[1])) and cancel ~= '1' then
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[3], id)
    redis.call('SADD', KEYS[2], id)
    redis.call('HSET', k, 'state', 'IN_PROGRESS', 'started_at', ARGV[1], 'owner', ARGV[3])
    if ARGV[4] == '' then redis.call('HDEL', k, 'worker') else redis.call('HSET', k, 'worker', ARGV[4]) end
    redis.call('HINCRBY', k, 'attempts', 1)
    return id
  end
end
return false
"""

# KEYS: job hash, queue, running, deadlines, terminal. ARGV: id, allowed from-states
# (comma list), the attempt that must hold the job ('' for any), then field/value pairs to set
# (every transition here is to a terminal state).
_TRANSITION = """
local s = redis.call('HGET', KEYS[1], 'state')
if not s or not string.find(',' .. ARGV[2] .. ',', ',' .. s .. ',', 1, true) then return 0 end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('RPUSH', KEYS[5], ARGV[1])
return 1
"""

# An orphan: KEYS as _TRANSITION plus the owner's alive key. ARGV: id, owner read before
# ('' for none), max attempts, now, seq span, worker_crashed error type, worker index ('' for
# an orphan of a dead server). Re-checked here, so a job that was re-claimed or finished
# meanwhile, or whose owner came back, is left alone; with a worker index: a job of this
# (live) server that the dead worker process claimed.
_ORPHAN = """
local k = KEYS[1]
if redis.call('HGET', k, 'state') ~= 'IN_PROGRESS' then redis.call('SREM', KEYS[3], ARGV[1]) return false end
if (redis.call('HGET', k, 'owner') or '') ~= ARGV[2] then return false end
if ARGV[7] == '' then
  if redis.call('EXISTS', KEYS[6]) == 1 then return false end
elseif redis.call('HGET', k, 'worker') ~= ARGV[7] then
  return false
end
redis.call('SREM', KEYS[3], ARGV[1])
if redis.call('HGET', k, 'cancel_requested') == '1' then
  redis.call('HSET', k, 'state', 'CANCELLED', 'finished_at', ARGV[4], 'error', 'the request was cancelled',
             'error_type', 'cancelled')
elseif tonumber(redis.call('HGET', k, 'attempts') or '0') >= tonumber(ARGV[3]) then
  redis.call('HSET', k, 'state', 'FAILED', 'finished_at', ARGV[4], 'error_type', ARGV[6],
             'error', 'the server stopped while this request was running')
else
  -- it already met its start deadline once, so the deadline is dropped
  redis.call('HSET', k, 'state', 'IN_QUEUE')
  redis.call('HDEL', k, 'started_at', 'deadline', 'owner', 'worker')
  local p, seq = redis.call('HGET', k, 'priority'), redis.call('HGET', k, 'seq')
  local score = tonumber(p) * tonumber(ARGV[5]) + tonumber(seq)
  redis.call('ZADD', KEYS[2], string.format('%.0f', score), ARGV[1])
  return 'requeued'
end
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('RPUSH', KEYS[5], ARGV[1])
return 'terminal'
"""

# KEYS: terminal, this instance's processing list, processors. ARGV: limit, instance.
# Moves up to `limit` ids onto the processing list, and returns that list's head: ids whose
# hooks failed last time come first. They stay there until mark_hooked.
_TAKE = """
redis.call('SADD', KEYS[3], ARGV[2])
local n = tonumber(ARGV[1]) - redis.call('LLEN', KEYS[2])
for _ = 1, n do
  if not redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') then break end
end
return redis.call('LRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1)
"""

# KEYS: terminal, a processing list, processors, its owner's alive key. ARGV: that instance.
# A dead server's handed-out ids go back to `terminal`.
_RETURN_TAKEN = """
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
while redis.call('LMOVE', KEYS[2], KEYS[1], 'LEFT', 'RIGHT') do end
redis.call('SREM', KEYS[3], ARGV[1])
return 1
"""

# KEYS: job hashes. A finished job's input, replaced by {} in those that still exist.
_DROP_INPUT = """
for _, k in ipairs(KEYS) do
  if redis.call('EXISTS', k) == 1 then redis.call('HSET', k, 'input', '{}') end
end
"""

# KEYS: job hash, queue, running, deadlines, terminal. ARGV: id, now. A queued job is cancelled
# (terminal), a running one gets the flag its worker polls; one script, so an orphan sweep that
# re-queues the job cannot slip between reading the state and setting the flag.
_CANCEL = """
local s = redis.call('HGET', KEYS[1], 'state')
if not s then return 'not_found' end
if s == 'IN_QUEUE' then
  redis.call('HSET', KEYS[1], 'state', 'CANCELLED', 'finished_at', ARGV[2], 'cancel_requested', '1',
             'error', 'the request was cancelled', 'error_type', 'cancelled')
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('RPUSH', KEYS[5], ARGV[1])
  return 'cancelled'
end
if s == 'IN_PROGRESS' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  return 'requested'
end
return 'already_completed'
"""

# KEYS: job hash, its logs. Deletes them only if the job is terminal (retention).
_DELETE_TERMINAL = """
local s = redis.call('HGET', KEYS[1], 'state')
if s == 'COMPLETED' or s == 'FAILED' or s == 'CANCELLED' or s == 'TIMED_OUT' then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
"""

_FIELDS_JSON = ("input", "result")
_FIELDS = ("id", "endpoint", "state", "priority", "seq", "created_at", "deadline", "started_at",
           "finished_at", "attempts", "cancel_requested", "result", "error", "error_type",
           "webhook_url", "base_url", "key_id", "owner", "worker")


class RedisJobStore:
    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "flashhead:", *,
                 instance: str | None = None, worker: int | None = None, lease_s: float = LEASE_S,
                 socket_timeout_s: float | None = SOCKET_TIMEOUT_S):
        """socket_timeout_s: connect and per-command limit (a redis that stops answering raises
        redis.TimeoutError instead of hanging the caller)."""
        self.r = redis_lib.Redis.from_url(url, decode_responses=True, socket_timeout=socket_timeout_s,
                                          socket_connect_timeout=socket_timeout_s)
        self.p = prefix
        self.instance = instance or new_instance_id()
        self.worker = worker
        self.lease_s = lease_s
        self._claim = self.r.register_script(_CLAIM)
        self._transition = self.r.register_script(_TRANSITION)
        self._orphan = self.r.register_script(_ORPHAN)
        self._take = self.r.register_script(_TAKE)
        self._return_taken = self.r.register_script(_RETURN_TAKEN)
        self._cancel = self.r.register_script(_CANCEL)
        self._drop_input = self.r.register_script(_DROP_INPUT)

    def _k(self, *parts: str) -> str:
        return self.p + ":".join(parts)

    def _job_keys(self, job_id: str) -> list[str]:
        return [self._k("job", job_id), self._k("queue"), self._k("running"), self._k("deadlines"),
                self._k("terminal")]

    def submit(self, new: NewJob) -> Job:
        seq = int(self.r.incr(self._k("seq")))
        fields = {"id": new.id, "endpoint": new.endpoint, "input": json.dumps(new.input),
                  "state": JobState.IN_QUEUE.value, "priority": int(new.priority), "seq": seq,
                  "created_at": now(), "attempts": 0, "cancel_requested": 0,
                  "base_url": new.base_url}
        for name in ("deadline", "webhook_url", "key_id"):
            if getattr(new, name) is not None:
                fields[name] = getattr(new, name)
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self._k("job", new.id), mapping=fields)
        pipe.zadd(self._k("queue"), {new.id: int(new.priority) * _SEQ_SPAN + seq})
        if new.deadline is not None:
            pipe.zadd(self._k("deadlines"), {new.id: new.deadline})
        pipe.execute()
        return self.get(new.id)

    def get(self, job_id: str, *, with_input: bool = True) -> Job | None:
        if with_input:
            h = self.r.hgetall(self._k("job", job_id))
        else:   # status polls skip the input: it can hold megabytes of data: URIs
            values = self.r.hmget(self._k("job", job_id), _FIELDS)
            h = {k: v for k, v in zip(_FIELDS, values) if v is not None}
            if h:
                h["input"] = "{}"
        return _hash_to_job(h) if h else None

    def queue_position(self, job_id: str) -> int:
        rank = self.r.zrank(self._k("queue"), job_id)
        return int(rank) if rank is not None else 0

    def queue_depth(self) -> int:
        return int(self.r.zcard(self._k("queue")))

    def running_count(self) -> int:
        return int(self.r.scard(self._k("running")))

    def claim(self, now_s: float | None = None) -> Job | None:
        t = now() if now_s is None else now_s
        job_id = self._claim(keys=[self._k("queue"), self._k("running"), self._k("deadlines")],
                             args=[repr(t), self._k("job", ""), self.instance,
                                   "" if self.worker is None else self.worker])
        return self.get(job_id) if job_id else None

    def _move(self, job_id: str, from_states: tuple[JobState, ...], attempt: int | None = None,
              **fields) -> Job | None:
        args: list = [job_id, ",".join(s.value for s in from_states), "" if attempt is None else str(attempt)]
        for k, v in fields.items():
            if v is not None:
                args += [k, json.dumps(v) if k in _FIELDS_JSON else v]
        ok = self._transition(keys=self._job_keys(job_id), args=args)
        return self.get(job_id) if ok else None

    def finish(self, job_id: str, state: JobState, *, result: dict | None = None,
               error: str | None = None, error_type: str | None = None,
               attempt: int | None = None) -> Job | None:
        assert state.is_terminal(), state
        held = (JobState.IN_PROGRESS,) if attempt is not None else (JobState.IN_QUEUE, JobState.IN_PROGRESS)
        return self._move(job_id, held, attempt, state=state.value,
                          finished_at=now(), result=result, error=error, error_type=error_type)

    def _processing(self, instance: str) -> str:
        return self._k("terminal", "processing", instance)

    def take_terminal(self, limit: int = 64) -> list[Job]:
        """Terminal jobs whose hooks have not run, moved onto this instance's processing list
        (so several API processes sharing this redis each get their own)."""
        ids = self._take(keys=[self._k("terminal"), self._processing(self.instance),
                               self._k("terminal", "processors")], args=[limit, self.instance])
        jobs = [(i, self.get(i, with_input=False)) for i in ids]
        self.mark_hooked([i for i, j in jobs if j is None])        # deleted meanwhile
        return [j for _, j in jobs if j is not None]

    def mark_hooked(self, job_ids: list[str]) -> None:
        """Their hooks ran: nothing reads a finished job's input again (megabytes of data: URIs,
        kept for job_retention_s otherwise), so it goes now (from hashes that still exist)."""
        if job_ids:
            pipe = self.r.pipeline(transaction=True)
            for job_id in job_ids:
                pipe.lrem(self._processing(self.instance), 0, job_id)
            self._drop_input(keys=[self._k("job", j) for j in job_ids], client=pipe)
            pipe.execute()

    def request_cancel(self, job_id: str) -> tuple[str, Job | None]:
        outcome = self._cancel(keys=self._job_keys(job_id), args=[job_id, repr(now())])
        return outcome, self.get(job_id) if outcome == CancelOutcome.CANCELLED else None

    def should_stop(self, job_id: str, attempt: int) -> bool:
        cancel, state, attempts = self.r.hmget(self._k("job", job_id), "cancel_requested", "state", "attempts")
        return cancel == "1" or state != JobState.IN_PROGRESS.value or attempts != str(attempt)

    def append_log(self, job_id: str, message: str, level: str = "INFO") -> None:
        self.r.rpush(self._k("logs", job_id), json.dumps([message, level, now()]))

    def logs(self, job_id: str) -> list[LogEntry]:
        return [LogEntry(*json.loads(x)) for x in self.r.lrange(self._k("logs", job_id), 0, -1)]

    def expire_overdue(self, now_s: float | None = None) -> list[Job]:
        t = now() if now_s is None else now_s
        out = []
        for job_id in self.r.zrangebyscore(self._k("deadlines"), "-inf", t):
            job = self._move(job_id, (JobState.IN_QUEUE,), state=JobState.TIMED_OUT.value,
                             finished_at=t, error="the request did not start before its deadline",
                             error_type=TIMEOUT_TYPE)
            if job is not None:
                out.append(job)
            else:
                self.r.zrem(self._k("deadlines"), job_id)
        return out

    def heartbeat(self) -> None:
        self.r.set(self._k("alive", self.instance), repr(now()), px=max(1, int(self.lease_s * 1000)))

    def release(self) -> None:
        self.r.delete(self._k("alive", self.instance))

    def recover(self) -> tuple[list[Job], list[Job]]:
        """Running jobs of instances whose lease expired -> (re-queued, failed); their
        handed-out terminal jobs go back to the `terminal` list."""
        processors = self._k("terminal", "processors")
        for other in self.r.smembers(processors):
            if other != self.instance:
                self._return_taken(keys=[self._k("terminal"), self._processing(other), processors,
                                         self._k("alive", other)], args=[other])
        # this server is alive: the jobs it runs are not orphans
        return self._take_back(lambda owner, worker: owner != self.instance, "")

    def recover_worker(self, worker: int) -> tuple[list[Job], list[Job]]:
        return self._take_back(lambda owner, w: owner == self.instance and w == str(worker), str(worker))

    def _take_back(self, match, worker: str) -> tuple[list[Job], list[Job]]:
        """Running jobs whose (owner, worker) match -> (re-queued, failed or cancelled), each
        re-checked by the _ORPHAN script."""
        requeued, failed = [], []
        running = list(self.r.smembers(self._k("running")))
        fields = self.r.pipeline(transaction=False)
        for job_id in running:
            fields.hmget(self._k("job", job_id), ["owner", "worker"])
        for job_id, (owner, claimed_by) in zip(running, fields.execute()):
            owner = owner or ""
            if not match(owner, claimed_by):
                continue
            outcome = self._orphan(keys=[*self._job_keys(job_id), self._k("alive", owner)],
                                   args=[job_id, owner, MAX_ATTEMPTS, repr(now()), _SEQ_SPAN, WORKER_CRASHED,
                                         worker])
            if outcome:
                job = self.get(job_id)
                (requeued if outcome == "requeued" else failed).append(job)
        return requeued, failed

    def close(self) -> None:
        self.r.close()

    def active_count(self, key_id: str) -> int:
        """Queued + running jobs of one API key: one pipelined read of the active jobs' owners."""
        ids = self.r.zrange(self._k("queue"), 0, -1) + list(self.r.smembers(self._k("running")))
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(self._k("job", job_id), "key_id")
        return sum(1 for owner in pipe.execute() if owner == key_id)
    # --- bounds and retention ---
    def expired_jobs(self, before: float, limit: int = 1000) -> list[str]:
        """Terminal jobs finished before `before` whose hooks have run. There is no index of
        finished jobs, so this SCANs the job hashes: fine every few minutes, not per request."""
        pending = set(self.r.lrange(self._k("terminal"), 0, -1))      # hooks not run yet,
        for other in self.r.smembers(self._k("terminal", "processors")):  # or running, not marked
            pending.update(self.r.lrange(self._processing(other), 0, -1))
        out: list[str] = []
        batch: list[str] = []
        for key in self.r.scan_iter(match=self._k("job", "*"), count=500):
            batch.append(key)
            if len(batch) >= 500:
                out += self._finished_before(batch, before, pending)
                batch = []
            if len(out) >= limit:
                return out[:limit]
        return (out + self._finished_before(batch, before, pending))[:limit]

    def _finished_before(self, keys: list[str], before: float, pending: set[str]) -> list[str]:
        pipe = self.r.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, "id", "state", "finished_at")
        out = []
        for job_id, state, finished in pipe.execute():
            if (job_id and state and finished and job_id not in pending and JobState(state).is_terminal()
                    and float(finished) < before):
                out.append(job_id)
        return out

    def delete_jobs(self, job_ids: list[str]) -> int:
        """Remove terminal jobs (hash, logs); a job not terminal is left alone."""
        n = 0
        for job_id in job_ids:
            n += int(self._delete_terminal(keys=[self._k("job", job_id), self._k("logs", job_id)]) or 0)
        return n

    @property
    def _delete_terminal(self):
        script = getattr(self, "_delete_script", None)
        if script is None:
            script = self._delete_script = self.r.register_script(_DELETE_TERMINAL)
        return script


def _hash_to_job(h: dict) -> Job:
    f = lambda k: float(h[k]) if k in h else None  # noqa: E731
    return Job(
        id=h["id"], endpoint=h["endpoint"], input=json.loads(h["input"]), state=JobState(h["state"]),
        priority=Priority(int(h["priority"])), seq=int(h["seq"]), created_at=float(h["created_at"]),
        deadline=f("deadline"), started_at=f("started_at"), finished_at=f("finished_at"),
        attempts=int(h.get("attempts", 0)), cancel_requested=h.get("cancel_requested") == "1",
        result=json.loads(h["result"]) if "result" in h else None, error=h.get("error"),
        error_type=h.get("error_type"), webhook_url=h.get("webhook_url"),
        base_url=h.get("base_url", ""), key_id=h.get("key_id"), owner=h.get("owner"),
        worker=int(h["worker"]) if "worker" in h else None)
