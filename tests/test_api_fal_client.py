"""End to end: the unmodified fal-client 1.0.3 against a real flashhead server over TLS,
rendering with the real CPU pipeline."""
from __future__ import annotations

import json
import time

import httpx
import pytest

from api_helpers import (PORTRAIT, TEXT_ENDPOINT, Server, WebhookReceiver, data_uri, fal_sync_client,
                         probe_video, tls_server)
from flashhead import constants as C
from flashhead.jobs.webhooks import verify_webhook

TEXT = "Hello there."          # about one second of speech: keeps the suite fast


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from tls_server(tmp_path_factory, "fal_client")


@pytest.fixture(scope="module")
def fal(server):
    return fal_sync_client(server)


@pytest.fixture(scope="module")
def portrait_uri():
    return data_uri(PORTRAIT, "image/png")


def _fetch(server: Server, url: str) -> httpx.Response:
    assert url.startswith(server.base_url + "/files/")
    with server.client() as c:
        r = c.get(url)
    assert r.status_code == 200
    return r


@pytest.mark.slow
def test_run_with_a_data_uri_returns_a_playable_mp4(server, fal, portrait_uri):
    out = fal.run(TEXT_ENDPOINT, {"image_url": portrait_uri, "text": TEXT, "seed": 7})
    assert set(out) >= {"video", "seed", "duration"} and out["seed"] == 7
    assert out["video"]["content_type"] == "video/mp4" and out["video"]["file_name"].endswith(".mp4")
    r = _fetch(server, out["video"]["url"])
    assert r.headers["content-type"] == "video/mp4" and len(r.content) == out["video"]["file_size"]
    info = probe_video(r.content)
    assert (info["width"], info["height"], info["fps"]) == (C.SIZE, C.SIZE, C.FPS) and info["audio"]
    assert info["frames"] == round(out["duration"] * C.FPS)
    assert 0.3 < out["duration"] < 5


def test_submit_status_with_logs_then_result(fal, portrait_uri):
    import fal_client

    handle = fal.submit(TEXT_ENDPOINT, {"image_url": portrait_uri, "text": TEXT})
    seen = set()
    while True:
        status = handle.status(with_logs=True)
        seen.add(type(status).__name__)
        if isinstance(status, fal_client.Completed):
            break
        time.sleep(0.05)
    assert status.error is None and status.metrics["inference_time"] > 0
    messages = [log["message"] for log in status.logs]
    assert messages[0].startswith("started") and messages[-1] == "completed"
    assert any("frames" in m for m in messages)
    assert all(log["timestamp"].endswith("Z") and log["level"] in ("INFO", "WARN") for log in status.logs)
    result = handle.get()
    assert result["video"]["url"] and result["duration"] > 0
    assert fal.result(TEXT_ENDPOINT, handle.request_id) == result


def test_cancel_queued_running_and_finished(fal, portrait_uri, tmp_path):
    import fal_client

    long_audio = data_uri(_long_wav(tmp_path), "audio/wav")
    running = fal.submit("fal-ai/flashhead/audio", {"image_url": portrait_uri, "audio_url": long_audio})
    queued = fal.submit(TEXT_ENDPOINT, {"image_url": portrait_uri, "text": TEXT})
    _wait_for(lambda: _rendered(running.status(with_logs=True)))     # mid-render
    queued.cancel()
    done = queued.status(with_logs=True)
    assert isinstance(done, fal_client.Completed) and done.error_type == "cancelled"
    running.cancel()
    _wait_for(lambda: isinstance(running.status(), fal_client.Completed))
    status = running.status(with_logs=True)
    assert status.error_type == "cancelled"
    done_frames, total = _rendered(status)[-1]
    assert done_frames < total          # stopped part-way, at a chunk boundary
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        running.cancel()
    assert err.value.status_code == 400 and json.loads(err.value.response.text) == {"status": "ALREADY_COMPLETED"}
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        running.get()
    assert err.value.error_type == "cancelled"


def test_subscribe_reports_queue_updates(fal, portrait_uri):
    import fal_client

    updates, enqueued = [], []
    out = fal.subscribe(TEXT_ENDPOINT, {"image_url": portrait_uri, "text": TEXT}, with_logs=True,
                        on_enqueue=enqueued.append, on_queue_update=updates.append)
    assert len(enqueued) == 1 and out["video"]["url"]
    assert any(isinstance(u, fal_client.InProgress) for u in updates)
    assert isinstance(updates[-1], fal_client.Completed)


def test_upload_file_then_generate_from_the_uploaded_url(server, fal):
    url = fal.upload_file(PORTRAIT)
    r = _fetch(server, url)
    assert r.content == PORTRAIT.read_bytes() and r.headers["content-type"] == "image/png"
    assert len(url.rsplit("/", 1)[1].split(".")[0]) >= 32        # unguessable key
    out = fal.subscribe(TEXT_ENDPOINT, {"image_url": url, "text": TEXT})
    assert probe_video(_fetch(server, out["video"]["url"]).content)["width"] == C.SIZE


def test_invalid_input_is_the_clients_422(fal, portrait_uri):
    import fal_client

    with pytest.raises(fal_client.FalClientHTTPError) as err:
        fal.run(TEXT_ENDPOINT, {"image_url": portrait_uri})
    assert err.value.status_code == 422
    assert err.value.message[0]["loc"] == ["body", "text"]
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        fal.submit(TEXT_ENDPOINT, {"image_url": portrait_uri, "text": TEXT, "voice": "Nobody"})
    assert err.value.status_code == 422 and err.value.message[0]["loc"] == ["body", "voice"]


def test_metadata_address_is_refused_before_any_connection(server, fal):
    import fal_client

    for url, words in (("http://169.254.169.254/latest/meta-data", "metadata"),
                       ("http://10.1.2.3/face.png", "private"),
                       ("HTTPS://10.1.2.3/face.png", "private")):      # schemes are case-insensitive
        with pytest.raises(fal_client.FalClientHTTPError) as err:
            fal.run(TEXT_ENDPOINT, {"image_url": url, "text": TEXT})
        assert err.value.status_code == 422 and err.value.error_type == "unsafe_url"
        assert err.value.message[0]["loc"] == ["body", "image_url"] and words in err.value.message[0]["msg"]


def test_webhook_is_delivered_signed_and_verifies_with_the_jwks(server, fal, portrait_uri):
    with WebhookReceiver() as receiver:
        handle = fal.submit(TEXT_ENDPOINT, {"image_url": portrait_uri, "text": TEXT},
                            webhook_url=receiver.url)
        assert receiver.event.wait(120), server.log_tail()
    headers, body = receiver.received[0]
    with server.client() as c:
        jwks = c.get("/.well-known/jwks.json").json()
    assert verify_webhook(headers, body, jwks)
    assert not verify_webhook(headers, body.replace(b"OK", b"KO"), jwks)
    payload = json.loads(body)
    assert payload["request_id"] == handle.request_id and payload["status"] == "OK"
    assert payload["payload"] == handle.get()


def _wait_for(pred, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def _rendered(status) -> list[tuple[int, int]]:
    """(done, total) of every "rendered N/M frames" progress log line (none while Queued: no logs)."""
    return [tuple(map(int, m["message"].split()[1].split("/"))) for m in (getattr(status, "logs", None) or [])
            if m["message"].startswith("rendered ")]


def _long_wav(tmp_path, repeats: int = 3):
    """10 s of speech x `repeats` (30 s by default), so a job runs long enough to cancel."""
    import io
    import wave

    from api_helpers import ROOT

    with wave.open(str(ROOT / "examples" / "speech_excerpt_10s.wav")) as w:
        params, frames = w.getparams(), w.readframes(w.getnframes())
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setparams(params)
        out.writeframes(frames * repeats)
    path = tmp_path / "long.wav"
    path.write_bytes(buf.getvalue())
    return path
