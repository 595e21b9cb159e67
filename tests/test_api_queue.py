"""Queue semantics over HTTP: priority, positions, start deadline, queue limit, SSE, errors, ops.

These need jobs of a known, controllable length, so the server runs with the test double
`fake_generate` (tests/api_helpers.py: one worker, 10 chunks x 0.15 s). The real pipeline is
exercised end to end in test_api_fal_client.py, test_api_js.py and test_api_restart.py.
"""
from __future__ import annotations

import json
import time

import pytest

from api_helpers import TEXT_ENDPOINT, Server, make_tls, wait_terminal

INPUT = {"image_url": "data:image/png;base64,AAAA", "text": "hi"}
Q = f"/queue/{TEXT_ENDPOINT}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("queue")
    s = Server(tmp / "data", make_tls(tmp / "tls"), fake_generate=True,
               env={"FLASHHEAD_TEST_FAKE_CHUNK_S": "0.15"}).start()
    yield s
    s.stop()


@pytest.fixture
def c(server):
    with server.client() as client:
        yield client


def submit(c, headers=None, params=None, **inp):
    r = c.post(Q, json={**INPUT, **inp}, headers=headers or {}, params=params or {})
    assert r.status_code == 200, r.text
    return r.json()


def started_at(c, rid) -> str:
    logs = wait_terminal(c, rid)["logs"]
    return next(e["timestamp"] for e in logs if e["message"].startswith("started"))


@pytest.mark.slow
def test_low_priority_runs_after_normal_and_positions_say_so(c):
    blocker = submit(c)
    low = submit(c, headers={"X-Fal-Queue-Priority": "low"})
    normal = submit(c, text="normal")
    assert low["queue_position"] >= 0 and low["status"] == "IN_QUEUE"
    assert c.get(f"{Q}/requests/{normal['request_id']}/status").json()["queue_position"] == 0
    s = c.get(f"{Q}/requests/{low['request_id']}/status")
    assert s.status_code == 202 and s.json()["queue_position"] == 1 and s.json()["logs"] is None
    assert started_at(c, normal["request_id"]) < started_at(c, low["request_id"])
    wait_terminal(c, blocker["request_id"])


def test_start_deadline_gives_504_user_timeout(c):
    blocker = submit(c)
    late = submit(c, headers={"X-Fal-Request-Timeout": "0.3"})
    status = wait_terminal(c, late["request_id"])
    assert status["status"] == "COMPLETED" and status["error_type"] == "timeout"
    r = c.get(f"{Q}/requests/{late['request_id']}")
    assert r.status_code == 504 and r.headers["x-fal-request-timeout-type"] == "user"
    assert r.headers["x-fal-request-id"] == late["request_id"]
    r = c.post(f"/{TEXT_ENDPOINT}", json=INPUT, headers={"X-Fal-Request-Timeout": "0.3"})
    assert r.status_code == 504 and r.headers["x-fal-request-timeout-type"] == "user"
    assert r.json()["error_type"] == "timeout"
    wait_terminal(c, blocker["request_id"])


def test_fal_max_queue_length_gives_429(c):
    ids = [submit(c)["request_id"] for _ in range(3)]          # 1 running, 2 waiting
    time.sleep(0.3)
    r = c.post(Q, json=INPUT, params={"fal_max_queue_length": 2})
    assert r.status_code == 429 and r.json()["error_type"] == "queue_full"
    assert r.headers["x-fal-error-type"] == "queue_full" and int(r.headers["retry-after"]) > 0
    assert c.post(Q, json=INPUT, params={"fal_max_queue_length": 50}).status_code == 200
    for rid in ids:
        c.put(f"{Q}/requests/{rid}/cancel")


@pytest.mark.slow
def test_status_stream_sends_changes_and_closes_when_done(c):
    rid = submit(c)["request_id"]
    events = []
    with c.stream("GET", f"{Q}/requests/{rid}/status/stream", params={"logs": 1}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert events[-1]["status"] == "COMPLETED" and "inference_time" in events[-1]["metrics"]
    messages = [e["message"] for ev in events for e in (ev["logs"] or [])]
    assert messages[0].startswith("started") and messages[-1] == "completed"
    assert len(messages) == len(set(messages))              # each line sent once


def test_unknown_ids_and_bad_headers(c):
    assert c.get(f"{Q}/requests/nope/status").status_code == 404
    assert c.get(f"{Q}/requests/nope").json()["error_type"] == "not_found"
    r = c.put(f"{Q}/requests/nope/cancel")
    assert r.status_code == 404 and r.json() == {"status": "NOT_FOUND"}
    r = c.post(Q, json=INPUT, headers={"X-Fal-Queue-Priority": "urgent"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["header", "X-Fal-Queue-Priority"]
    r = c.post(Q, json=INPUT, params={"fal_webhook": "http://169.254.169.254/hook"})
    assert r.status_code == 422 and r.json()["error_type"] == "unsafe_url"
    assert r.json()["detail"][0]["loc"] == ["query", "fal_webhook"]
    r = c.post(Q, json=INPUT, headers={"X-Fal-Request-Timeout": "soon"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["header", "X-Fal-Request-Timeout"]


@pytest.mark.slow        # waits for its job: ~3 s
def test_result_of_a_pending_job_is_400(c):
    rid = submit(c)["request_id"]
    r = c.get(f"{Q}/requests/{rid}")
    assert r.status_code == 400 and r.json()["error_type"] == "in_progress"
    wait_terminal(c, rid)
    assert c.get(f"{Q}/requests/{rid}").status_code == 200


def test_openapi_has_the_seed_schemas(c):
    spec = c.get("/openapi.json").json()
    req = spec["components"]["schemas"]["FlashHeadRequest"]
    assert req["required"] == ["image_url", "text"]
    assert req["properties"]["stability"]["default"] == 0.5
    voice = spec["components"]["schemas"]["VoiceEnum"]
    assert len(voice["enum"]) == 20 and req["properties"]["voice"]["default"] == "Aria"
    assert spec["components"]["schemas"]["FlashHeadAudioRequest"]["required"] == ["image_url", "audio_url"]
    assert set(spec["components"]["schemas"]["FlashHeadResponse"]["required"]) == {"video", "seed", "duration"}
    assert f"/{TEXT_ENDPOINT}" in spec["paths"] and f"{Q}/audio" in spec["paths"]


def test_cors_preflight_allows_browsers(c):
    r = c.options(f"/{TEXT_ENDPOINT}", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                                                 "Access-Control-Request-Headers": "authorization,content-type"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] in ("*", "https://app.example")
    assert "x-fal-request-id" in c.get("/health", headers={"Origin": "https://a.b"}).headers["access-control-expose-headers"]


def test_health_and_metrics(c):
    wait_terminal(c, submit(c)["request_id"])
    h = c.get("/health").json()
    assert h["status"] == "ok" and h["auth"] == "open"
    text = c.get("/metrics").text
    for name in ("flashhead_queue_depth", "flashhead_jobs_running", "flashhead_job_duration_seconds_count",
                 'flashhead_jobs_total{endpoint="fal-ai/flashhead",state="COMPLETED"}',
                 '# TYPE flashhead_errors_total counter', "flashhead_http_request_seconds_bucket"):
        assert name in text, name
