"""POST /{owner}/{alias}/stream against the real server, read by the official fal_client."""
from __future__ import annotations

import base64
import io
import subprocess
import wave
from pathlib import Path

import fal_client
import httpx
import numpy as np
import pytest

from flashhead import constants as C
from flashhead.errors import RenderFailed
from stream_server import (PORTRAIT, SPEECH, data_uri, decode_frames, fal_pointed_server, fetch, long_speech_wav,
                           reading_nothing, segment_bytes, speech_pcm, wait_for_no_sessions)

JS_DIR = Path(__file__).parent / "js"
TEXT = "Hello there, this is a short streamed sentence from the local server."


@pytest.fixture(scope="module")
def server(tmp_path_factory, engines):
    yield from fal_pointed_server(tmp_path_factory.mktemp("sse"), engines)


@pytest.fixture(scope="module")
def client(server):
    return fal_client.SyncClient(key=server[1])


def check_stream(events: list[dict], key: str) -> dict:
    """Chunk events in order, then the final output; the segments decode to the final video."""
    *chunks, final = events
    assert len(chunks) >= 3 and set(final) >= {"video", "seed", "duration", "timings"}
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    assert chunks[0]["mime"].startswith('video/mp4; codecs="avc1.')
    starts = [c["start"] for c in chunks]
    assert starts == sorted(starts) and starts[0] == 0.0
    fmp4 = segment_bytes(chunks[0]["init_segment"]) + b"".join(segment_bytes(c["segment"]) for c in chunks)
    mp4 = fetch(final["video"]["url"], key)
    assert final["video"]["file_size"] == len(mp4) and final["video"]["content_type"] == "video/mp4"
    streamed_frames, streamed_audio = decode_frames(fmp4)
    stored_frames, stored_audio = decode_frames(mp4)
    expected = round(final["duration"] * C.FPS)
    assert streamed_frames == stored_frames == expected
    assert sum(round(c["duration"] * C.FPS) for c in chunks) == expected
    # fMP4 has no edit list: decoding keeps the AAC priming frame and the last partial frame.
    aac_frame = 1024 / C.SAMPLE_RATE
    assert 0 <= streamed_audio - final["duration"] <= 2 * aac_frame
    assert abs(stored_audio - final["duration"]) <= aac_frame
    return final


@pytest.mark.slow
def test_python_client_streams_chunks_then_the_final_output(server, client):
    args = {"image_url": data_uri(PORTRAIT, "image/png"), "text": TEXT, "seed": 11}
    final = check_stream(list(client.stream(C.TEXT_ENDPOINT, args)), server[1])
    assert final["seed"] == 11


def _speech_wav_uri(seconds: float) -> str:
    """The first `seconds` of the example speech, as a WAV data URI (a short render)."""
    buf = io.BytesIO()
    with wave.open(str(SPEECH)) as src, wave.open(buf, "wb") as out:
        out.setparams(src.getparams())
        out.writeframes(speech_pcm(seconds))
    return f"data:audio/wav;base64,{base64.b64encode(buf.getvalue()).decode()}"


@pytest.mark.slow
def test_audio_endpoint_streams_with_segment_urls(server, client):
    args = {"image_url": data_uri(PORTRAIT, "image/png"), "audio_url": _speech_wav_uri(3.0)}
    events = list(client.stream(C.AUDIO_ENDPOINT, args, path="/stream?segments=url"))
    for e in events[:-1]:
        assert e["segment"].startswith(server[0]) and "/files/" in e["segment"]
    events = [{**e, "segment": fetch(e["segment"], server[1]),
               **({"init_segment": fetch(e["init_segment"], server[1])} if "init_segment" in e else {})}
              if "segment" in e else e for e in events]
    assert check_stream(events, server[1])["duration"] == pytest.approx(3.0, abs=0.05)


def test_errors_before_the_stream_are_http_errors(server):
    base, key, _ = server
    url = f"{base}/{C.TEXT_ENDPOINT}/stream"
    r = httpx.post(url, json={"image_url": data_uri(PORTRAIT, "image/png")}, headers={"Authorization": f"Key {key}"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "text"]
    r = httpx.post(url, json={"image_url": "x", "text": "hi"})
    assert r.status_code == 401
    r = httpx.post(url, json={"image_url": "data:image/png;base64,AAAA", "text": "hi"},
                   headers={"Authorization": f"Key {key}"})
    assert r.status_code == 422 and r.headers["x-fal-error-type"] != "internal_error"


def test_error_mid_stream_is_an_event_then_close(server, client, monkeypatch):
    renderer = server[2].state.ctx.engines.renderer
    real_render, calls = renderer.render, []

    def failing(session, span):           # fault injection: the third chunk fails
        calls.append(span.start_frame)
        if len(calls) == 3:
            raise RenderFailed("injected failure")
        return real_render(session, span)

    monkeypatch.setattr(renderer, "render", failing)
    events = list(client.stream(C.TEXT_ENDPOINT, {"image_url": data_uri(PORTRAIT, "image/png"), "text": TEXT}))
    assert [e.get("type") for e in events[:-1]] == ["chunk", "chunk"]
    assert events[-1] == {"detail": "injected failure", "error_type": "render_failed"}
    streams = Path(server[2].state.ctx.settings.data_dir) / "streams"
    assert list(streams.glob("*.mp4")) == []           # the partial MP4 went with the failure


@pytest.mark.slow
def test_js_client_stream_done_resolves_to_the_final_output(server, tmp_path, js_client):
    base, key, _ = server
    out = subprocess.run(["node", str(JS_DIR / "stream_done.mjs")], cwd=JS_DIR, capture_output=True, text=True,
                         timeout=240, env={"PATH": "/usr/bin:/usr/local/bin", "FLASHHEAD_URL": base,
                                           "FAL_KEY": key, "PORTRAIT": str(PORTRAIT)})
    assert out.returncode == 0, out.stderr + out.stdout
    import json
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["chunks"] >= 3 and report["last_index"] == report["chunks"] - 1
    assert report["final"]["video"]["content_type"] == "video/mp4"
    assert report["final"] == report["last_event"]
    assert np.isclose(report["final"]["duration"], report["chunks"] * C.CHUNK_FRAMES / C.FPS, atol=0.33)


@pytest.mark.slow
def test_a_client_that_stops_reading_loses_its_stream_and_its_engine_slot(server, monkeypatch):
    """A client that keeps its connection open but reads nothing (its TCP window full) held the
    server's send, its session, its engine slot and every chunk rendered since for as long as
    the connection lived (90 s and more when probed). client_send_timeout_s bounds that."""
    import json

    base, key, app = server
    monkeypatch.setattr(app.state.ctx.settings, "client_send_timeout_s", 2.0)
    body = json.dumps({"image_url": data_uri(PORTRAIT, "image/png"), "audio_url": "data:audio/wav;base64,"
                       + base64.b64encode(long_speech_wav()).decode()}).encode()
    with reading_nothing(base) as sock:
        sock.sendall(f"POST /{C.AUDIO_ENDPOINT}/stream HTTP/1.1\r\nHost: {base.split('//')[1]}\r\n"
                     f"Authorization: Key {key}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert sock.recv(15) == b"HTTP/1.1 200 OK"
        assert app.state.ctx.engine.health()["sessions"] == 1          # rendering 60 s of speech
        wait_for_no_sessions(app, timeout=30)                          # ... and no longer, unread
