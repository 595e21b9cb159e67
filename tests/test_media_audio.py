"""decode_audio on tones encoded by PyAV in every accepted container, plus the failure cases."""
from __future__ import annotations

import io
import struct
import subprocess
import sys

import av
import numpy as np
import pytest

from flashhead import constants as C
from flashhead.errors import InputError, LimitExceeded
from flashhead.media import audio as audio_module
from flashhead.media.audio import decode_audio

FREQ = 440.0


def tone(rate: int, seconds: float, channels: int, silent_right: bool = False) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    wave = (0.5 * np.sin(2 * np.pi * FREQ * t)).astype(np.float32)
    planes = np.tile(wave, (channels, 1))
    if silent_right and channels == 2:
        planes[1] = 0.0
    return planes


def encode(fmt: str, codec: str, rate: int, seconds: float, channels: int = 2, *, planes=None,
           layout: str | None = None, **kw) -> bytes:
    """A tone in `fmt`; `planes` (channels x samples) and `layout` replace it when given."""
    buf = io.BytesIO()
    layout = layout or ("stereo" if channels == 2 else "mono")
    planes = tone(rate, seconds, channels, **kw) if planes is None else planes
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        # packed: PyAV 15 cannot make a planar frame of 8 or more channels
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planes.T).reshape(1, -1), format="flt",
                                           layout=layout)
        frame.sample_rate = rate
        frame.pts = 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def peak_frequency(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spectrum) * C.SAMPLE_RATE / x.size)


@pytest.mark.parametrize("fmt, codec, rate", [
    ("wav", "pcm_s16le", 44_100),
    ("wav", "pcm_s16le", 16_000),
    ("mp3", "libmp3lame", 44_100),
    ("flac", "flac", 48_000),
    ("ogg", "libvorbis", 22_050),
    ("ogg", "libopus", 48_000),
    ("ipod", "aac", 24_000),  # .m4a
])
def test_formats_decode_to_16k_mono(fmt, codec, rate):
    audio = decode_audio(encode(fmt, codec, rate, 1.5))
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.size / C.SAMPLE_RATE - 1.5) < 0.08  # codecs pad by up to a frame or two
    assert abs(peak_frequency(audio) - FREQ) < 3
    middle = audio[C.SAMPLE_RATE // 4: -C.SAMPLE_RATE // 4]
    assert 0.3 < np.sqrt(np.mean(middle ** 2)) < 0.41  # 0.5 / sqrt(2) = 0.354


def test_wav_is_exact():
    audio = decode_audio(encode("wav", "pcm_s16le", 16_000, 2.0, channels=1))
    assert audio.size == 32_000
    expected = tone(16_000, 2.0, 1)[0]
    assert np.abs(audio - expected).max() < 1e-3


def test_stereo_is_averaged():
    audio = decode_audio(encode("wav", "pcm_s16le", 16_000, 1.0, silent_right=True))
    assert 0.22 < np.abs(audio).max() < 0.28


# Decoded in a child process: PyAV 15 crashed the process (SIGSEGV) reading a planar frame of 8
# or more channels, which took down the render engine and every session on it.
DECODE_IN_CHILD = """
import sys, numpy as np
from flashhead.media.audio import decode_audio
np.save(sys.stdout.buffer, decode_audio(sys.stdin.buffer.read()))
"""


@pytest.mark.parametrize("fmt, codec, layout, channels", [
    ("wav", "pcm_s16le", "7.1", 8),
    ("wav", "pcm_s16le", "12c", 12),
    ("flac", "flac", "7.1", 8),
    ("ogg", "libopus", "7.1", 8),
])
def test_eight_or_more_channels_are_averaged(fmt, codec, layout, channels):
    rate = 48_000 if codec == "libopus" else 16_000
    planes = np.zeros((channels, rate), np.float32)
    planes[0] = tone(rate, 1.0, 1)[0]                  # the voice in one channel, the rest silent
    child = subprocess.run([sys.executable, "-c", DECODE_IN_CHILD], capture_output=True, timeout=60,
                           input=encode(fmt, codec, rate, 1.0, planes=planes, layout=layout))
    assert child.returncode == 0, f"decoding crashed or failed: rc {child.returncode}, {child.stderr[-500:]!r}"
    audio = np.load(io.BytesIO(child.stdout))
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.size / C.SAMPLE_RATE - 1.0) < 0.08
    assert abs(peak_frequency(audio) - FREQ) < 3
    if codec != "libopus":                          # lossless: exactly the channels' mean
        expected = tone(C.SAMPLE_RATE, 1.0, 1)[0] / channels
        assert np.abs(audio - expected).max() < 1e-3


@pytest.mark.parametrize("data", [
    np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes(),
    b"this is not audio at all\n" * 100,
    b"",
])
def test_garbage_is_input_error(data):
    with pytest.raises(InputError) as exc:
        decode_audio(data)
    assert exc.value.field == "audio_url"
    assert not isinstance(exc.value, LimitExceeded)


def test_truncated_header():
    data = encode("flac", "flac", 16_000, 1.0)
    with pytest.raises(InputError):
        decode_audio(data[:30], field="audio")


def test_image_is_not_audio(portrait_path):
    with pytest.raises(InputError, match="audio"):
        decode_audio(portrait_path.read_bytes())


def wav_header(samples: int, declared: int | None = None, rate: int = 16_000) -> bytes:
    size = 2 * (samples if declared is None else declared)
    return (b"RIFF" + struct.pack("<I", 36 + size) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, 2 * rate, 2, 16)
            + b"data" + struct.pack("<I", size)) + b"\0\0" * samples


@pytest.mark.parametrize("samples", [0, 100])
def test_empty_or_shorter_than_a_frame(samples):
    with pytest.raises(InputError, match="no speech") as exc:
        decode_audio(wav_header(samples))
    assert exc.value.field == "audio_url"


def test_exactly_one_frame_is_enough():
    assert decode_audio(wav_header(C.SAMPLES_PER_FRAME)).size == C.SAMPLES_PER_FRAME


def test_too_long_refused():
    data = encode("wav", "pcm_s16le", 16_000, 3.0)
    with pytest.raises(LimitExceeded, match="limit is 2 s") as exc:
        decode_audio(data, max_seconds=2.0)
    assert exc.value.field == "audio_url"
    assert decode_audio(data, max_seconds=3.0).size == 48_000


@pytest.mark.parametrize("fmt, codec", [("flac", "flac"), ("ipod", "aac"), ("wav", "pcm_s16le")])
def test_declared_duration_refused_before_decoding(monkeypatch, fmt, codec):
    def must_not_decode(*args):
        raise AssertionError("decoding started although the header declares the length")

    monkeypatch.setattr(audio_module, "_decode", must_not_decode)
    with pytest.raises(LimitExceeded, match="3.0 s"):
        decode_audio(encode(fmt, codec, 16_000, 3.0), max_seconds=1.0)


def test_limit_applies_while_decoding_when_no_duration_is_declared(monkeypatch):
    """Without a declared duration the decoder stops at the limit instead of decoding it all."""
    monkeypatch.setattr(audio_module, "_check_declared_duration", lambda *a: None)
    decoded = []
    real = audio_module.av.AudioResampler

    class CountingResampler(real):
        def resample(self, frame):
            out = super().resample(frame)
            decoded.extend(f.samples for f in out)
            return out

    monkeypatch.setattr(audio_module.av, "AudioResampler", CountingResampler)
    with pytest.raises(LimitExceeded):
        decode_audio(encode("ogg", "libvorbis", 16_000, 20.0), max_seconds=1.0)
    assert 16_000 < sum(decoded) < 3 * 16_000
