"""Mouth features from sound alone: follow the RMS envelope, close in silence, stream like offline."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.io import wavfile

from flashhead import constants as C
from flashhead.speech.base import Speech
from flashhead.visemes.base import FrameFeatures
from flashhead.visemes.features import StreamingFeatureExtractor, features_for, features_from_audio


@pytest.fixture(scope="module")
def speech(speech_path) -> np.ndarray:
    sr, x = wavfile.read(speech_path)
    assert sr == C.SAMPLE_RATE
    return x.astype(np.float32) / 32768.0


def rms_envelope(audio: np.ndarray) -> np.ndarray:
    n = -(-len(audio) // C.SAMPLES_PER_FRAME)
    x = np.zeros(n * C.SAMPLES_PER_FRAME)
    x[:len(audio)] = audio
    return np.sqrt((x.reshape(n, -1) ** 2).mean(1))


def corr_at(a, b, lag):
    if lag > 0:
        a, b = a[lag:], b[:-lag]
    elif lag < 0:
        a, b = a[:lag], b[-lag:]
    return np.corrcoef(a, b)[0, 1]


def test_open_follows_rms_at_lag_zero(speech):
    f = features_from_audio(speech)
    env = rms_envelope(speech)
    assert len(f) == len(env) == int(np.ceil(len(speech) / C.SAMPLES_PER_FRAME))
    corrs = {lag: corr_at(f.open, env, lag) for lag in range(-3, 4)}
    assert corrs[0] >= 0.8, corrs
    assert max(corrs, key=corrs.get) == 0, corrs


def test_silence_is_closed(speech):
    pad = np.zeros(C.SAMPLE_RATE, np.float32)
    noise = np.random.default_rng(0).normal(0, 3e-4, C.SAMPLE_RATE).astype(np.float32)
    audio = np.concatenate([pad, speech[:3 * C.SAMPLE_RATE], noise, speech[:2 * C.SAMPLE_RATE], pad])
    f = features_from_audio(audio)
    env = rms_envelope(audio)
    silent = env < 10 ** (-50 / 20)
    assert silent.sum() > 40
    assert (f.open[silent] == 0).mean() >= 0.95
    assert f.voiced[:25].max() == 0 and f.voiced[-25:].max() == 0
    for col in ("open", "spread", "round", "closure", "teeth", "energy"):
        assert np.all(getattr(f, col)[:20] == 0), col


def test_no_flicker_on_steady_sound():
    t = np.arange(2 * C.SAMPLE_RATE) / C.SAMPLE_RATE
    tone = (0.2 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    f = features_from_audio(np.concatenate([np.zeros(8000, np.float32), tone]))
    on = f.voiced[20:-2]
    assert on.min() == 1 and np.abs(np.diff(f.voiced)).sum() == 1


def test_all_silence_and_tiny_inputs():
    assert features_from_audio(np.zeros(16000, np.float32)).open.max() == 0
    assert len(features_from_audio(np.zeros(0, np.float32))) == 0
    f = features_from_audio(np.full(10, 0.5, np.float32))
    assert len(f) == 1 and np.isfinite(f.open).all()


def test_shape_cues():
    """A low, dark vowel rounds; a bright one spreads; hiss shows teeth; a gap closes the lips."""
    sr = C.SAMPLE_RATE
    t = np.arange(int(0.4 * sr)) / sr
    def vowel(formants):
        return sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate(formants)) * 0.2
    dark = vowel([150, 300, 450, 600])
    bright = vowel([150, 2300, 2600, 3000])
    hiss = np.random.default_rng(1).normal(0, 0.02, len(t))
    hp = np.diff(hiss, prepend=0) * 1.5                # high-passed noise, ~12 dB below the vowels
    gap = np.zeros(int(0.04 * sr))
    audio = np.concatenate([dark, bright, hp, dark[:3200], gap, dark[:3200]]).astype(np.float32)
    f = features_from_audio(audio)
    n = int(0.4 * C.FPS)
    assert f.round[3:n - 3].mean() > f.round[n + 3:2 * n - 3].mean() + 0.3
    assert f.spread[n + 3:2 * n - 3].mean() > f.spread[3:n - 3].mean() + 0.3
    assert f.teeth[2 * n + 2:3 * n - 2].mean() > 0.5
    g = 3 * n + 5                                      # the 40 ms gap
    assert f.closure[g - 1:g + 2].max() > 0.8 and f.open[g - 1:g + 2].min() < 0.05


def test_features_for_dispatches(speech):
    clip = speech[:2 * C.SAMPLE_RATE]
    f = features_for(Speech(audio=clip))
    assert len(f) == 50 and np.array_equal(f.open, features_from_audio(clip).open)


def test_streaming_matches_offline(speech):
    offline = features_from_audio(speech)
    ex = StreamingFeatureExtractor()
    rng = np.random.default_rng(3)
    parts, pos = [], 0
    while pos < len(speech):
        n = int(rng.integers(100, 3000))
        out = ex.push(speech[pos:pos + n])
        pos += n
        done = sum(len(p) for p in parts) + len(out)
        # never more than the lookahead (2 frames) plus the partial frame behind the input
        assert pos // C.SAMPLES_PER_FRAME - done <= 2
        parts.append(out)
    parts.append(ex.flush())
    stream = FrameFeatures.concat(parts)
    assert len(stream) == len(offline)
    assert np.corrcoef(stream.open, offline.open)[0, 1] > 0.95
    late = slice(3 * C.FPS, None)                      # after the running statistics settle
    assert np.abs(stream.open[late] - offline.open[late]).mean() < 0.06
    assert np.array_equal(stream.voiced[late] > 0, offline.voiced[late] > 0) or \
        (stream.voiced[late] != offline.voiced[late]).mean() < 0.03


def test_streaming_extractor_memory_is_bounded_over_a_long_utterance():
    """An hour-long utterance must not grow the extractor: its buffers keep a fixed window."""
    from flashhead.visemes.audio import StreamingFeatureExtractor

    rng = np.random.default_rng(1)
    ext = StreamingFeatureExtractor()
    sizes, emitted = [], 0
    chunk = (rng.standard_normal(16_000) * 0.2).astype(np.float32)   # 1 s of loud noise
    for second in range(90):
        emitted += len(ext.push(chunk))
        if second in (10, 89):
            sizes.append(len(ext._on) + len(ext._pending) + len(ext._raw))
    assert sizes[1] == sizes[0]
    assert emitted == 90 * 25 - 2          # all but the look-ahead frames are final
