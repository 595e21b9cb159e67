"""The quality harness: its measurements on synthetic signals, and its bounds on a real render."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from flashhead import constants as C

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def Q():
    spec = importlib.util.spec_from_file_location("flashhead_bench_quality", ROOT / "bench" / "quality.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["flashhead_bench_quality"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_av_sync_finds_a_known_lag(Q):
    rng = np.random.default_rng(0)
    env = np.convolve(rng.random(300), np.ones(4) / 4, "same")
    opening = np.roll(env, 3) + rng.normal(0, 0.01, 300)   # video 3 frames late
    r = Q.av_sync(opening, env)
    assert r["lag_frames"] == 3 and r["correlation"] > 0.9
    r = Q.av_sync(rng.random(300), env)
    assert r["correlation"] < 0.4


def test_silence_closure_counts_open_mouths_in_silence(Q):
    env = np.r_[np.ones(50), np.zeros(50)]
    opening = np.r_[np.full(50, 0.2), np.full(40, 0.01), np.full(10, 0.2)]
    r = Q.silence_closure(opening, env)
    assert r["silent_frames"] == 50 and r["closed_share"] == pytest.approx(0.8)


def test_rms_envelope_has_one_value_per_frame(Q):
    audio = np.r_[np.zeros(640), np.full(640, 0.5), np.zeros(100)].astype(np.float32)
    env = Q.rms_envelope(audio, 3)
    assert env.shape == (3,) and env[0] == 0 and env[1] == pytest.approx(0.5) and env[2] == 0


def test_ssim_masked(Q):
    rng = np.random.default_rng(1)
    a = (rng.random((64, 64)) * 255).astype(np.uint8)
    mask = np.ones((64, 64), bool)
    assert Q.ssim_masked(a, a, mask) == pytest.approx(1.0)
    assert Q.ssim_masked(a, 255 - a, mask) < 0.2


def _features(audio):
    from flashhead.visemes.audio import features_from_audio
    return features_from_audio(audio)


@pytest.fixture(scope="module")
def speech_report(Q, speech_path, portrait_path):
    from flashhead.render.base import SpeechSpan
    from flashhead.render.cpu import CpuRenderer

    audio = Q.read_audio(str(speech_path))[: 8 * C.SAMPLE_RATE]
    feats = _features(audio)
    r = CpuRenderer()
    img = cv2.cvtColor(cv2.imread(str(portrait_path)), cv2.COLOR_BGR2RGB)
    p = r.prepare(img, 4)
    s = r.new_session(p, 4)
    spf = C.SAMPLES_PER_FRAME
    frames = []
    for a in range(0, len(feats), C.CHUNK_FRAMES):
        b = min(a + C.CHUNK_FRAMES, len(feats))
        seg = np.zeros((b - a) * spf, np.float32)
        seg[: len(audio[a * spf:b * spf])] = audio[a * spf:b * spf]
        frames.extend(r.render(s, SpeechSpan(a, feats.slice(a, b), seg)))
    return Q.evaluate(frames, audio)


def assert_meets_issue_bounds(rep: dict) -> None:
    """The bounds the quality issue sets for lip sync, silence and identity."""
    assert rep["face_found_share"] == 1.0
    assert abs(rep["av_sync"]["lag_frames"]) <= 1
    assert rep["av_sync"]["correlation"] >= 0.6
    assert rep["silence"]["silent_frames"] >= 10
    assert rep["silence"]["closed_share"] >= 0.95
    assert rep["identity"]["ssim_non_mouth"]["last_minute"] >= 0.95
    assert rep["identity"]["landmark_drift"]["last_minute"] < 0.05


@pytest.mark.slow     # renders and measures 8 s of video (identity included): ~15 s
def test_real_speech_render_meets_the_bounds(speech_report):
    assert_meets_issue_bounds(speech_report)


@pytest.mark.slow     # renders and measures 6 s more video: ~15 s
def test_harness_notices_a_late_video(Q, speech_report, speech_path, portrait_path):
    """The same bounds fail when the mouth is driven 4 frames late: the metric can fail."""
    from flashhead.render.base import SpeechSpan
    from flashhead.render.cpu import CpuRenderer

    audio = Q.read_audio(str(speech_path))[: 6 * C.SAMPLE_RATE]
    feats = _features(audio)
    late = feats.slice(0, len(feats))
    for k in ("open", "spread", "round", "closure", "teeth"):
        getattr(late, k)[:] = np.r_[np.zeros(4), getattr(feats, k)[:-4]]
    r = CpuRenderer(head_motion=0.0)
    img = cv2.cvtColor(cv2.imread(str(portrait_path)), cv2.COLOR_BGR2RGB)
    p = r.prepare(img, 0)
    frames = r.render(r.new_session(p, 0), SpeechSpan(0, late, audio))
    rep = Q.evaluate(frames, audio)
    assert rep["av_sync"]["lag_frames"] in (3, 4, 5)


def test_evaluate_file_reads_an_mp4(Q, tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=C.FPS)
        v.width = v.height = 64
        v.pix_fmt = "yuv420p"
        a = c.add_stream("aac", rate=C.SAMPLE_RATE)
        a.layout = "mono"
        for i in range(10):
            img = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
            c.mux(v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        for p in v.encode():
            c.mux(p)
        samples = (0.1 * np.sin(np.arange(C.SAMPLE_RATE // 2) / 5)).astype(np.float32)
        fr = av.AudioFrame.from_ndarray(samples[None], format="flt", layout="mono")
        fr.sample_rate = C.SAMPLE_RATE
        for p in a.encode(fr):
            c.mux(p)
        for p in a.encode():
            c.mux(p)
    frames, audio, fps = Q.read_video(str(path))
    assert fps == C.FPS and audio is not None and len(audio) > C.SAMPLE_RATE // 4
    assert sum(1 for _ in frames) == 10


TTS_VOICES = ("Bill", "Jessica", "Charlie")   # slowest and lowest, fastest, another accent
TTS_SENTENCES = (0, 3)                         # of SWEEP_SENTENCES: a name, a question; rounding


@pytest.fixture(scope="module", params=[(v, i) for v in TTS_VOICES for i in TTS_SENTENCES],
                ids=[f"{v}-{i}" for v in TTS_VOICES for i in TTS_SENTENCES])
def tts_report(request, Q, engines, portrait_path):
    """A short espeak render through the real pipeline (prepare + iter_chunks), measured."""
    from flashhead.pipeline import iter_chunks, prepare, request_from_input

    voice, i = request.param
    req = request_from_input({"image_url": str(portrait_path), "text": Q.SWEEP_SENTENCES[i],
                              "voice": voice, "seed": 1}, C.TEXT_ENDPOINT)
    prep = prepare(req, engines, allow_paths=True)
    assert prep.speech.phonemes, "the TTS path must drive the mouth from phonemes"
    chunks = list(iter_chunks(prep, engines))
    frames = [f for ch in chunks for f in ch.frames]
    audio = np.concatenate([ch.audio for ch in chunks])
    return Q.evaluate(frames, audio, identity=False)


def test_tts_render_meets_the_sweep_targets(Q, tts_report):
    """The issue's per-voice targets for the text path, on single sentences."""
    rep, t = tts_report, Q.SWEEP_TARGETS
    assert rep["seconds"] > 3 and rep["face_found_share"] == 1.0
    assert abs(rep["av_sync"]["lag_frames"]) <= t["max_abs_lag"]
    assert rep["av_sync"]["correlation"] >= t["min_correlation"]
    assert rep["silence"]["silent_frames"] >= 5
    assert rep["silence"]["closed_share"] >= t["min_silent_closed"]
    assert rep["speech"]["open_share"] >= t["min_speech_open"]


def test_speech_open_counts_a_frozen_mouth(Q):
    env = np.r_[np.zeros(20), np.ones(60)]
    moving = np.r_[np.zeros(20), np.tile([0.02, 0.3], 30)]
    assert Q.speech_open(moving, env)["open_share"] == pytest.approx(0.5)
    assert Q.speech_open(np.zeros(80), env)["open_share"] == 0.0
