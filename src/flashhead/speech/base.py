"""Speech: audio plus an optional phoneme timeline, from TTS or from an upload."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from flashhead import constants as C


@dataclass(frozen=True)
class Phoneme:
    symbol: str     # the engine's phoneme symbol (espeak mnemonic, ARPAbet, or a character)
    start: float    # seconds from the start of the audio
    end: float      # seconds


@dataclass
class Speech:
    audio: np.ndarray                      # float32 mono at C.SAMPLE_RATE, in [-1, 1]
    phonemes: list[Phoneme] | None = None  # None when only the sound is known (uploads)
    meta: dict = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return len(self.audio) / C.SAMPLE_RATE


class TTSEngine(ABC):
    """Text -> Speech. Engines are created once and reused across requests."""

    name: str = "base"

    @abstractmethod
    def synthesize(self, text: str, voice: str = C.DEFAULT_VOICE,
                   stability: float = C.DEFAULT_STABILITY, seed: int = 0) -> Speech:
        """Speak `text`; raise flashhead.errors.InputError on bad arguments."""
