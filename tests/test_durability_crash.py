"""THE crash test (issue 15, "What it must show"): real `flashhead serve` processes, 50 jobs in
flight (queued, running, finishing), SIGKILL of the server, restart on the same data dir (and
the same redis). Every job reaches exactly one terminal state, every result file is whole, and
every job with a webhook gets exactly one delivery that its receiver acknowledged, signed.

The server renders with the queue tests' fake generate (api_helpers.fake_generate: 10 chunks of
50 ms, and a result file whose content the test can check); the queue, stores, outbox, worker
threads, storage and HTTP are the real ones.
"""
from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from api_helpers import TEXT_ENDPOINT, Server, WebhookReceiver, make_tls
from flashhead.jobs.webhooks import verify_webhook

JOBS = 50
Q = f"/queue/{TEXT_ENDPOINT}"


def _statuses(c, ids) -> dict[str, dict]:
    return {rid: c.get(f"{Q}/requests/{rid}/status").json() for rid in ids}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_sigkill_with_50_jobs_in_flight_loses_nothing_and_doubles_nothing(backend, tmp_path, request):
    env = {"FLASHHEAD_TEST_FAKE_CHUNK_S": "0.05", "FLASHHEAD_TEST_FAKE_CHUNKS": "10",
           "FLASHHEAD_WEBHOOK_TIMEOUT_S": "2"}        # a delivery cut off by the kill is re-sent soon
    if backend == "redis":
        env |= {"FLASHHEAD_JOB_STORE": request.getfixturevalue("redis_url"),
                "FLASHHEAD_REDIS_PREFIX": f"crash{time.monotonic_ns()}:", "FLASHHEAD_JOB_LEASE_S": "1"}
    server = Server(tmp_path / "data", make_tls(tmp_path / "tls"), env=env, workers=4, fake_generate=True)
    with WebhookReceiver() as receiver:
        server.start()
        try:
            with server.client() as c:
                hooked, ids = set(), []
                for i in range(JOBS):
                    params = {"fal_webhook": receiver.url} if i % 5 else {}    # 40 with a webhook
                    r = c.post(Q, json={"image_url": "data:,x", "text": f"job {i}", "seed": i}, params=params)
                    assert r.status_code == 200, r.text
                    ids.append(r.json()["request_id"])
                    if params:
                        hooked.add(ids[-1])
                deadline = time.monotonic() + 30
                while (done := sum(s["status"] == "COMPLETED" for s in _statuses(c, ids).values())) < 10:
                    assert time.monotonic() < deadline, "jobs do not finish"
                    time.sleep(0.05)
                at_kill = Counter(s["status"] for s in _statuses(c, ids).values())
            server.kill()                                            # mid-burst: no shutdown code runs
            assert at_kill["IN_QUEUE"] > 0 and at_kill["IN_PROGRESS"] > 0 and at_kill["COMPLETED"] > 0, at_kill

            server.start()                                           # same data dir, same redis
            with server.client() as c:
                deadline = time.monotonic() + 60
                while True:
                    final = _statuses(c, ids)
                    states = Counter(s["status"] for s in final.values())
                    if states == {"COMPLETED": JOBS}:
                        break
                    assert time.monotonic() < deadline, states
                    time.sleep(0.2)
                results = {}
                for rid in ids:
                    assert final[rid].get("error") is None, final[rid]     # one run each, none failed
                    result = c.get(f"{Q}/requests/{rid}").json()
                    video = c.get(result["video"]["url"])
                    assert video.status_code == 200
                    assert video.content.startswith(b"fake video: "), video.content[:40]
                    assert json.loads(video.content[len(b"fake video: "):])["seed"] == result["seed"]
                    results[rid] = result
                jwks = c.get("/.well-known/jwks.json").json()
                deadline = time.monotonic() + 30
                while not hooked <= {json.loads(b)["request_id"] for _, b in receiver.received}:
                    assert time.monotonic() < deadline, len(hooked - {json.loads(b)["request_id"]
                                                                      for _, b in receiver.received})
                    time.sleep(0.1)
                time.sleep(3)                                        # re-sends would come by now
                assert _statuses(c, ids) == final                    # terminal states do not change
        finally:
            server.stop()
    sent = Counter(json.loads(b)["request_id"] for _, b in receiver.received)
    assert set(sent) == hooked and set(sent.values()) == {1}, {k: v for k, v in sent.items() if v != 1}
    for headers, body in receiver.received:
        payload = json.loads(body)
        assert verify_webhook(headers, body, jwks)
        assert payload["status"] == "OK" and payload["payload"] == results[payload["request_id"]]
