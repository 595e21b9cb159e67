"""Speech uploads: any audio PyAV can demux (WAV, MP3, FLAC, OGG/Opus/Vorbis, M4A/AAC) ->
float32 mono at SAMPLE_RATE, refusing long files as soon as the limit is passed."""
from __future__ import annotations

import io

import av
import numpy as np

from flashhead import constants as C
from flashhead.errors import InputError, LimitExceeded


def decode_audio(
    data: bytes, *, field: str = "audio_url", max_seconds: float = C.MAX_AUDIO_SECONDS
) -> np.ndarray:
    """Decode `data` to a 1-D float32 array at SAMPLE_RATE Hz, mono (channels averaged)."""
    max_samples = int(max_seconds * C.SAMPLE_RATE)
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise InputError("the file has no audio track", field=field)
            stream = container.streams.audio[0]
            _check_declared_duration(container, stream, max_seconds, field)
            pieces = _decode(container, stream, max_samples, max_seconds, field)
    except (av.FFmpegError, ValueError, EOFError) as exc:
        raise InputError(f"the file is not audio that can be decoded ({_reason(exc)})", field=field) from None
    audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    if audio.size < C.SAMPLES_PER_FRAME:
        raise InputError(
            f"the audio holds no speech: {audio.size / C.SAMPLE_RATE:.3f} s, under one video frame",
            field=field,
        )
    return audio


def _check_declared_duration(container, stream, max_seconds: float, field: str) -> None:
    """Refuse at once when the header already declares a duration over the limit."""
    seconds = None
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / av.time_base
    if seconds is not None and seconds > max_seconds + C.FRAME_SECONDS:
        raise LimitExceeded(_too_long(seconds, max_seconds), field=field)


def _decode(container, stream, max_samples: int, max_seconds: float, field: str) -> list[np.ndarray]:
    # Keep the channels and average them here: swresample's stereo -> mono downmix adds the
    # channels at -3 dB each, which makes a centred voice 41 % louder than in either channel.
    resampler = av.AudioResampler(format="fltp", layout=None, rate=C.SAMPLE_RATE)
    pieces: list[np.ndarray] = []
    total = 0
    for frame in container.decode(stream):
        frame.pts = None  # let the resampler count samples; broken timestamps must not matter
        for out in resampler.resample(frame):
            pieces.append(_mono(out))
            total += pieces[-1].size
        if total > max_samples:
            raise LimitExceeded(_too_long(None, max_seconds), field=field)
    for out in resampler.resample(None):
        pieces.append(_mono(out))
        total += pieces[-1].size
    if total > max_samples:
        raise LimitExceeded(_too_long(total / C.SAMPLE_RATE, max_seconds), field=field)
    return pieces


def _mono(frame: av.AudioFrame) -> np.ndarray:
    planes = frame.to_ndarray()  # channels x samples
    return planes.mean(axis=0, dtype=np.float32) if planes.shape[0] > 1 else planes[0].astype(np.float32)


def _too_long(seconds: float | None, max_seconds: float) -> str:
    length = f"{seconds:.1f} s" if seconds is not None else f"longer than {max_seconds:g} s"
    return f"the audio is {length}; the limit is {max_seconds:g} s"


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
