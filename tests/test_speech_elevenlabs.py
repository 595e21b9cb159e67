"""ElevenLabs engine against a local HTTP server speaking ElevenLabs' documented protocol."""
from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from flashhead import constants as C
from flashhead.config import Settings
from flashhead.api.errors import status_for
from flashhead.errors import BackendUnavailable, InputError, RateLimited
from flashhead.speech import factory
from flashhead.speech.elevenlabs import ElevenLabsEngine
from flashhead.speech.espeak import EspeakEngine
from flashhead.speech.voices import VOICES
from flashhead.visemes.features import features_for

KEY = "test-key-123"
VOICE_IDS = {v.voice_id for v in VOICES.values()}


def fake_speech(text: str) -> dict:
    """0.08 s of tone per character (silence for spaces) and the matching alignment."""
    per, sr = 0.08, C.SAMPLE_RATE
    chunks, starts, ends = [], [], []
    for i, ch in enumerate(text):
        t = np.arange(int(per * sr)) / sr
        amp = 0.0 if ch == " " else 0.3
        chunks.append(amp * np.sin(2 * np.pi * 180 * t))
        starts.append(round(i * per, 3))
        ends.append(round((i + 1) * per, 3))
    pcm = (np.concatenate(chunks) * 32767).astype("<i2").tobytes()
    align = {"characters": list(text), "character_start_times_seconds": starts,
             "character_end_times_seconds": ends}
    return {"audio_base64": base64.b64encode(pcm).decode(), "alignment": align,
            "normalized_alignment": align}


class Handler(BaseHTTPRequestHandler):
    requests: list = []
    failures: dict = {}          # text -> (status, answers left with that status) before a 200

    def log_message(self, *args):
        pass

    def reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        url = urlparse(self.path)
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        Handler.requests.append((url.path, parse_qs(url.query), dict(self.headers), body))
        parts = url.path.split("/")
        if self.headers.get("xi-api-key") != KEY:
            return self.reply(401, {"detail": {"status": "invalid_api_key",
                                               "message": "Invalid API key"}})
        if len(parts) != 5 or parts[1:3] != ["v1", "text-to-speech"] or parts[4] != "with-timestamps":
            return self.reply(404, {"detail": "Not Found"})
        if parts[3] not in VOICE_IDS:
            return self.reply(400, {"detail": {"status": "voice_not_found", "message": "no voice"}})
        vs = body.get("voice_settings", {})
        if not isinstance(body.get("text"), str) or not 0 <= vs.get("stability", -1) <= 1:
            return self.reply(422, {"detail": [{"loc": ["body", "text"], "msg": "bad",
                                                "type": "value_error"}]})
        if body["text"] == "slow":
            time.sleep(2.0)
        status, left = Handler.failures.get(body["text"], (0, 0))
        if left:
            Handler.failures[body["text"]] = (status, left - 1)
            return self.reply(status, {"detail": "try again"})
        if body["text"] == "overload":
            return self.reply(503, {"detail": "service unavailable"})
        if body["text"] == "too many":
            return self.reply(429, {"detail": {"status": "too_many_concurrent_requests",
                                               "message": "slow down"}})
        self.reply(200, fake_speech(body["text"]))


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def tts(server):
    engine = ElevenLabsEngine(KEY, base_url=server, backoff_s=0.01, max_tries=3)
    Handler.requests.clear()
    Handler.failures.clear()
    yield engine
    engine.close()


def test_request_shape_and_result(tts):
    s = tts.synthesize("hello mama", "George", 0.3, seed=5)
    path, query, headers, body = Handler.requests[-1]
    assert path == "/v1/text-to-speech/JBFqnCBsd6RMkjVDRZzb/with-timestamps"
    assert query["output_format"] == ["pcm_16000"]
    assert headers["xi-api-key"] == KEY
    assert body["text"] == "hello mama" and body["seed"] == 5 and body["model_id"]
    assert body["voice_settings"]["stability"] == 0.3 and "similarity_boost" in body["voice_settings"]
    assert s.audio.dtype == np.float32
    assert s.duration == pytest.approx(10 * 0.08 + 0.3, abs=0.01)
    symbols = [p.symbol for p in s.phonemes]
    assert symbols[0] == "_" and symbols[-1] == "_" and "ll" not in symbols
    assert symbols[1:4] == ["h", "e", "l"]
    starts = [p.start for p in s.phonemes]
    assert starts == sorted(starts) and s.phonemes[-1].end == pytest.approx(s.duration)
    assert s.meta["phoneme_set"] == "letters"


def test_letters_drive_the_mouth(tts):
    s = tts.synthesize("mama", "Aria")
    f = features_for(s)
    m_frames = [int((p.start + p.end) / 2 * C.FPS) for p in s.phonemes if p.symbol == "m"]
    a_frames = [int((p.start + p.end) / 2 * C.FPS) for p in s.phonemes if p.symbol == "a"]
    assert all(f.closure[i] >= 0.9 for i in m_frames)
    assert all(f.open[i] > 0.25 for i in a_frames)
    assert max(f.open[i] for i in m_frames) < 0.05


def test_digraphs_merge(tts):
    s = tts.synthesize("the ship", "Aria")
    symbols = [p.symbol for p in s.phonemes]
    assert "th" in symbols and "sh" in symbols


def test_bad_key_is_backend_unavailable(server):
    engine = ElevenLabsEngine("wrong", base_url=server)
    with pytest.raises(BackendUnavailable, match="401"):
        engine.synthesize("hello")


@pytest.mark.parametrize("text,error,status", [("overload", BackendUnavailable, 503),
                                               ("too many", RateLimited, 429)])
def test_server_errors_are_retried_then_retryable(tts, text, error, status):
    with pytest.raises(error) as e:
        tts.synthesize(text)
    assert len(Handler.requests) == 3                      # max_tries
    assert status_for(type(e.value)) == status and not isinstance(e.value, InputError)


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_transient_errors_are_retried(tts, status):
    Handler.failures["hello"] = (status, 2)
    assert tts.synthesize("hello").duration > 0
    assert len(Handler.requests) == 3


def test_client_errors_are_not_retried(tts, monkeypatch):
    monkeypatch.setattr("flashhead.speech.elevenlabs.check_stability", lambda s: 7.0)   # the stub's 422
    with pytest.raises(InputError):
        tts.synthesize("hello")
    assert len(Handler.requests) == 1


def test_overall_deadline(server):
    engine = ElevenLabsEngine(KEY, base_url=server, deadline_s=1.5, backoff_s=0.01, max_tries=10)
    Handler.requests.clear()
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable):
        engine.synthesize("slow")                           # the stub takes 2 s to answer
    assert time.monotonic() - t0 < 2.5 and len(Handler.requests) == 1
    engine.close()


def test_validation_error_is_input_error(tts, monkeypatch):
    monkeypatch.setattr("flashhead.speech.elevenlabs.check_stability", lambda s: 7.0)
    with pytest.raises(InputError) as e:
        tts.synthesize("hello", "Aria", 0.5)
    assert "422" in e.value.message


def test_local_checks_before_any_request(tts):
    with pytest.raises(InputError):
        tts.synthesize("hi", "Nobody")
    with pytest.raises(InputError):
        tts.synthesize("  ")
    with pytest.raises(InputError):
        tts.synthesize("hi", "Aria", 2.0)
    assert Handler.requests == []


@pytest.mark.slow
def test_unreachable_server():
    engine = ElevenLabsEngine(KEY, base_url="http://127.0.0.1:9", timeout_s=2)
    with pytest.raises(BackendUnavailable):
        engine.synthesize("hello")


def test_factory_choice(server, monkeypatch):
    factory._engines.clear()
    monkeypatch.delenv("ELEVENLABS_API_KEY", raising=False)
    assert isinstance(factory.get_engine(Settings(tts="auto")), EspeakEngine)
    monkeypatch.setenv("ELEVENLABS_API_KEY", KEY)
    engine = factory.get_engine(Settings(tts="auto", elevenlabs_base_url=server))
    assert isinstance(engine, ElevenLabsEngine)
    assert factory.get_engine(Settings(tts="auto", elevenlabs_base_url=server)) is engine
    assert isinstance(factory.get_engine(Settings(tts="espeak")), EspeakEngine)
    with pytest.raises(BackendUnavailable):
        factory.get_engine(Settings(tts="nonsense"))
    factory._engines.clear()
