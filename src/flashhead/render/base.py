"""The renderer interface: prepare a portrait once, then render frames chunk by chunk."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from flashhead.errors import InputError
from flashhead.visemes.base import FrameFeatures

# Idle poses a session can hold between utterances (zero features): the plain idle, a listener
# (eyes on the viewer, an occasional small nod, mouth closed, head tilted towards the viewer)
# and a thinker (head tilted the other way, short glances up and aside that come back to the
# viewer with a small nod, mouth closed). Renderers blend in and out of them smoothly.
IDLE_POSES = ("idle", "listening", "thinking")


@dataclass
class SpeechSpan:
    """A span of speech to render, on the global frame clock.

    start_frame: index of the first frame of this span since the session started.
    features:    per-frame features, len == number of frames to render.
    audio:       float32 16 kHz mono samples for exactly these frames
                 (len == len(features) * C.SAMPLES_PER_FRAME); the neural renderer needs it.
    """

    start_frame: int
    features: FrameFeatures
    audio: np.ndarray

    @property
    def n_frames(self) -> int:
        return len(self.features)


class Renderer(ABC):
    """Backends: 'cpu' (default, no weights), 'flashhead-lite', 'flashhead-pro'.

    Settings go to the constructor; heavy loading happens in setup(). A prepared portrait
    (the return of prepare) is immutable and may be shared by many sessions; per-session
    motion state lives in the object returned by new_session().
    """

    name = "base"
    # Frames of delay between audio and picture: frame i of render() output shows audio frame
    # i - latency_frames (the neural renderer needs a whole chunk of audio first). The pipeline
    # drops the first latency_frames frames and takes the tail from flush().
    latency_frames = 0
    # A StepBatcher when concurrent sessions' steps run as one batch (neural), else None: the
    # engine's scheduler announces the steps it hands out to it (engine/scheduler.py).
    batcher = None

    def setup(self) -> None:
        """Load weights/models. Raise BackendUnavailable with a clear message if impossible."""

    @abstractmethod
    def prepare(self, image: np.ndarray, seed: int) -> object:
        """image: (512, 512, 3) uint8 RGB face crop -> prepared portrait state."""

    @abstractmethod
    def new_session(self, portrait: object, seed: int) -> object:
        """Per-stream state (motion history, RNG). Cheap."""

    @abstractmethod
    def render(self, session: object, span: SpeechSpan) -> np.ndarray:
        """Render span.n_frames frames -> (N, 512, 512, 3) uint8 RGB.

        Spans of one session must be rendered in order; zero features mean idle
        (mouth closed, blinking and breathing continue).
        """

    def flush(self, session: object) -> np.ndarray:
        """Frames still held back after the last span (latency_frames of them)."""
        return np.zeros((0, 0, 0, 3), np.uint8)

    def close(self) -> None:
        """Release resources."""

    def set_idle_pose(self, session: object, pose: str) -> None:
        """Hold `pose` (one of IDLE_POSES) whenever the session renders idle frames, from the next
        rendered frame on; speech frames fade it out and it returns when they end.

        Renderers without idle poses keep the plain idle (this default only checks the name).
        """
        check_idle_pose(pose)


def check_idle_pose(pose: object) -> str:
    if pose not in IDLE_POSES:
        raise InputError(f"unknown idle pose {pose!r}; one of {', '.join(IDLE_POSES)}", field="pose")
    return pose
