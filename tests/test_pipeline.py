"""Issue 2 end to end: inputs -> speech -> features -> CPU renderer -> MP4, decoded and measured."""
from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import wave

import av
import numpy as np
import pytest

from flashhead import constants as C
from flashhead.errors import InputError, LimitExceeded, NoFaceError, UnsafeURLError
from flashhead.pipeline import generate, iter_chunks, prepare, request_from_input


def wav_bytes(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(C.SAMPLE_RATE)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def read_speech(path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768


def decode(path):
    """-> (frames (N,H,W,3) uint8, video stream info, audio stream info)."""
    with av.open(str(path)) as f:
        v, a = f.streams.video[0], f.streams.audio[0]
        info = {"vcodec": v.codec_context.name, "w": v.codec_context.width,
                "h": v.codec_context.height, "fps": float(v.average_rate),
                "acodec": a.codec_context.name,
                "duration": float(f.duration) / av.time_base}
        frames = np.stack([fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)])
    return frames, info


def mouth_box(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """Mouth box from an independent landmark pass (mediapipe face mesh on the frame)."""
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1) as fm:
        lm = fm.process(rgb).multi_face_landmarks[0].landmark
    h, w = rgb.shape[:2]
    pts = np.array([(lm[i].x * w, lm[i].y * h) for i in (61, 291, 0, 17, 152)])
    x0, x1 = pts[:2, 0].min() - 10, pts[:2, 0].max() + 10
    y0, y1 = pts[2, 1] - 8, (pts[3, 1] + pts[4, 1]) / 2
    return int(x0), int(y0), int(x1), int(y1)


def inner_lip_opening(frames: np.ndarray) -> np.ndarray:
    """Gap between the inner lips (landmarks 13, 14) / face width (234, 454), per frame."""
    import mediapipe as mp

    out = np.zeros(len(frames))
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1) as fm:
        for i, rgb in enumerate(frames):
            lm = fm.process(rgb).multi_face_landmarks[0].landmark
            gap = np.hypot(lm[13].x - lm[14].x, lm[13].y - lm[14].y)
            out[i] = gap / np.hypot(lm[234].x - lm[454].x, lm[234].y - lm[454].y)
    return out


@pytest.fixture(scope="module")
def text_video(engines, portrait_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "text.mp4"
    req = request_from_input({"image_url": str(portrait_path), "text": "Hello there, how are you today?",
                              "seed": 11}, C.TEXT_ENDPOINT)
    return generate(req, engines, out, allow_paths=True), out


def test_mp4_format_and_duration(text_video):
    result, path = text_video
    frames, info = decode(path)
    assert (info["w"], info["h"]) == (C.SIZE, C.SIZE)
    assert info["vcodec"] == "h264" and info["acodec"] == "aac"
    assert abs(info["fps"] - C.FPS) < 1e-6
    assert abs(len(frames) / C.FPS - result.duration) <= C.FRAME_SECONDS
    assert abs(info["duration"] - result.duration) <= C.FRAME_SECONDS + 0.03  # AAC priming
    assert result.duration > 1.0
    assert set(result.timings) >= {"tts", "features", "render", "encode", "total"}


@pytest.mark.slow
def test_mouth_moves_with_speech_and_rests_in_silence(engines, portrait_path, speech_path, tmp_path):
    speech = read_speech(speech_path)[: 2 * C.SAMPLE_RATE]
    silence = np.zeros(int(1.6 * C.SAMPLE_RATE), np.float32)
    audio = np.concatenate([silence[:8000], speech, silence, speech])
    req = request_from_input({"image_url": str(portrait_path), "seed": 3,
                              "audio_url": data_uri(wav_bytes(audio), "audio/wav")}, C.AUDIO_ENDPOINT)
    result = generate(req, engines, tmp_path / "gap.mp4", allow_paths=True)
    frames, _ = decode(result.path)
    x0, y0, x1, y1 = mouth_box(frames[0])
    mouth = frames[:, y0:y1, x0:x1].astype(np.float32)
    motion = np.abs(np.diff(mouth, axis=0)).mean(axis=(1, 2, 3))   # per-frame mouth change
    speech_frames = slice(int(0.5 * C.FPS) + 5, int(2.5 * C.FPS) - 5)
    gap_frames = slice(int(2.5 * C.FPS) + 8, int(4.1 * C.FPS) - 6)   # inside the silence
    assert motion[speech_frames].mean() > 4 * max(motion[gap_frames].mean(), 0.25)
    # in silence the lips are closed (measured by an independent landmark pass on the output)
    from PIL import Image

    opening = inner_lip_opening(frames)
    closed = inner_lip_opening(np.asarray(Image.open(portrait_path).convert("RGB"))[None])[0]
    assert opening[gap_frames].max() < closed + 0.01
    assert np.percentile(opening[speech_frames], 90) > closed + 0.04


def test_deterministic_under_seed(engines, portrait_path):
    req = request_from_input({"image_url": str(portrait_path), "text": "Same seed, same frames.",
                              "seed": 5}, C.TEXT_ENDPOINT)
    runs = []
    for _ in range(2):
        prep = prepare(req, engines, allow_paths=True)
        runs.append(np.concatenate([c.frames for c in iter_chunks(prep, engines)]))
    assert runs[0].shape == runs[1].shape and np.array_equal(runs[0], runs[1])


@pytest.mark.slow
def test_seed_is_picked_and_reported_when_missing(engines, portrait_path, tmp_path):
    """The seed a result reports, sent back, gives the same video; another seed does not."""
    def frames(out: str, **seed) -> tuple[int | None, np.ndarray]:
        req = request_from_input({"image_url": str(portrait_path), "text": "Pick one.", **seed}, C.TEXT_ENDPOINT)
        result = generate(req, engines, tmp_path / out, allow_paths=True)
        return result.seed, decode(result.path)[0]

    picked, first = frames("picked.mp4")
    assert isinstance(picked, int) and 0 <= picked < 2**31
    again, same = frames("again.mp4", seed=picked)
    assert again == picked and same.shape == first.shape and np.array_equal(same, first)
    _, other = frames("other.mp4", seed=picked + 1)
    assert other.shape != first.shape or not np.array_equal(other, first)   # the seed matters


def _req(engines, portrait_path, **payload):
    base = {"image_url": str(portrait_path), "text": "hi there"}
    endpoint = C.AUDIO_ENDPOINT if "audio_url" in payload else C.TEXT_ENDPOINT
    if "audio_url" in payload:
        base.pop("text")
    return prepare(request_from_input(base | payload, endpoint), engines, allow_paths=True)


def test_not_an_image_is_refused(engines, portrait_path):
    with pytest.raises(InputError) as exc:
        _req(engines, portrait_path, image_url=data_uri(b"hello, not an image", "image/png"))
    assert exc.value.field == "image_url"


def test_picture_without_a_face_is_refused(engines, portrait_path):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (400, 300), (90, 140, 200)).save(buf, "PNG")
    with pytest.raises(NoFaceError) as exc:
        _req(engines, portrait_path, image_url=data_uri(buf.getvalue(), "image/png"))
    assert "face" in str(exc.value)


def test_corrupt_audio_is_refused(engines, portrait_path):
    with pytest.raises(InputError) as exc:
        _req(engines, portrait_path, audio_url=data_uri(b"RIFF\x00\x00garbage" * 50, "audio/wav"))
    assert exc.value.field == "audio_url"


def test_overlong_audio_is_refused(engines, portrait_path, monkeypatch):
    monkeypatch.setattr(engines.settings, "max_audio_seconds", 1.0)
    audio = np.zeros(3 * C.SAMPLE_RATE, np.float32)
    with pytest.raises(LimitExceeded):
        _req(engines, portrait_path, audio_url=data_uri(wav_bytes(audio), "audio/wav"))


def test_private_network_url_is_refused_before_any_connection(engines, portrait_path, monkeypatch):
    import socket

    def no_connect(*a, **k):
        raise AssertionError(f"a connection was attempted: {a}")

    monkeypatch.setattr(socket.socket, "connect", no_connect)
    monkeypatch.setattr(socket, "create_connection", no_connect)
    with pytest.raises(UnsafeURLError):
        _req(engines, portrait_path, image_url="http://169.254.169.254/latest/meta-data/")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "flashhead", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_cli_generate_prints_result_json(portrait_path, tmp_path):
    out = tmp_path / "cli.mp4"
    p = run_cli("generate", "--image", str(portrait_path), "--text", "Hi!", "--seed", "2", "-o", str(out))
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["seed"] == 2 and result["video"]["content_type"] == "video/mp4"
    assert result["video"]["file_size"] == out.stat().st_size > 0


@pytest.mark.parametrize("args, word", [
    (["--text", "   "], "text"),
    (["--text", "hi", "--voice", "Nobody"], "voice"),
    (["--audio", __file__], "audio_url"),
])
@pytest.mark.slow
def test_cli_bad_input_exits_nonzero_with_one_line(portrait_path, tmp_path, args, word):
    p = run_cli("generate", "--image", str(portrait_path), *args, "-o", str(tmp_path / "x.mp4"))
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and word in lines[0]


def test_rendered_ahead_keeps_order_bounds_the_lead_and_stops_with_its_consumer():
    """Chunks come in order with at most `depth` waiting (+1 being made, +1 blocked on the full
    queue); the producer's error reaches the consumer after the chunks before it; a consumer
    that stops early stops the producer thread and closes its generator."""
    import threading
    import time

    from flashhead.pipeline import rendered_ahead

    made, closed = [], []

    def source(n, fail_at=-1):
        try:
            for i in range(n):
                if i == fail_at:
                    raise ValueError("render failed")
                made.append(i)
                yield i
        finally:
            closed.append(n)

    got = []
    for x in rendered_ahead(source(12), 2):
        time.sleep(0.01)
        assert len(made) <= len(got) + 4
        got.append(x)
    assert got == list(range(12)) and closed == [12]
    got.clear()
    with pytest.raises(ValueError, match="render failed"):
        for x in rendered_ahead(source(6, fail_at=4), 2):
            got.append(x)
    assert got == [0, 1, 2, 3]
    made.clear()
    src = source(1000)                    # held here: closed by the producer, not by gc
    chunks = rendered_ahead(src, 2)
    next(chunks)
    chunks.close()
    assert closed[-1] == 1000 and len(made) <= 5
    assert not [t for t in threading.enumerate() if t.name == "render-ahead"]


def test_generate_stops_when_cancelled_asking_on_the_calling_thread(engines, portrait_path, tmp_path):
    """Chunks are rendered in a second thread, but should_cancel (a job store read, whose
    connection is per thread) is asked on generate's own thread, before each chunk is encoded."""
    import threading

    from flashhead.errors import Cancelled

    asked = []

    def should_cancel():
        asked.append(threading.current_thread())
        return len(asked) >= 2

    req = request_from_input({"image_url": str(portrait_path), "text": "This sentence is long "
                              "enough for several chunks of video.", "seed": 1}, C.TEXT_ENDPOINT)
    with pytest.raises(Cancelled):
        generate(req, engines, tmp_path / "c.mp4", allow_paths=True, should_cancel=should_cancel)
    assert len(asked) == 2 and set(asked) == {threading.current_thread()}
