"""The seed's input and output models (fal-ai/flashhead and fal-ai/flashhead/audio)."""
from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from flashhead import constants as C
from flashhead.errors import InputError

VoiceEnum = Enum("VoiceEnum", {v: v for v in C.VOICES}, type=str)


class FlashHeadRequest(BaseModel):
    """Text endpoint input: portrait + text spoken by the built-in TTS."""

    model_config = ConfigDict(extra="ignore", use_enum_values=True)

    image_url: str = Field(..., description="URL of the face reference image. Portrait recommended.")
    text: str = Field(..., description="Text to speak. Converted to speech via ElevenLabs.")
    voice: VoiceEnum = Field(C.DEFAULT_VOICE, description="ElevenLabs voice name.")
    stability: float = Field(C.DEFAULT_STABILITY, ge=0.0, le=1.0, description="Voice stability (0-1).")
    seed: int | None = Field(None, ge=C.SEED_MIN, le=C.SEED_MAX, description="Random seed for reproducibility.")

    @field_validator("text")
    @classmethod
    def _text_ok(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text is empty or whitespace only")
        if len(v) > C.MAX_TEXT_CHARS:
            raise ValueError(f"text is {len(v)} characters; the limit is {C.MAX_TEXT_CHARS}")
        return v


class FlashHeadAudioRequest(BaseModel):
    """Audio endpoint input: portrait + speech audio."""

    model_config = ConfigDict(extra="ignore")

    image_url: str = Field(..., description="URL of the face reference image. Portrait recommended.")
    audio_url: str = Field(..., description="URL of the speech audio file (WAV, MP3, etc).")
    seed: int | None = Field(None, ge=C.SEED_MIN, le=C.SEED_MAX, description="Random seed for reproducibility.")


def check_seed(value) -> int | None:
    """A live session's seed (the realtime `start` message, the WHEP query): None, or an integer
    within the request models' bounds."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError("must be an integer", field="seed")
    if not C.SEED_MIN <= value <= C.SEED_MAX:
        raise InputError(f"must be between {C.SEED_MIN} and {C.SEED_MAX} (a 64-bit integer)", field="seed")
    return value


class File(BaseModel):
    url: str = Field(..., description="The URL where the file can be downloaded from.")
    content_type: str | None = Field(None, description="The mime type of the file.")
    file_name: str | None = Field(None, description="The name of the file.")
    file_size: int | None = Field(None, description="The size of the file in bytes.")


class Timings(BaseModel):
    model_config = ConfigDict(extra="allow")

    tts: float = 0.0
    features: float = 0.0
    render: float = 0.0
    encode: float = 0.0
    total: float = 0.0


class FlashHeadResponse(BaseModel):
    video: File = Field(..., description="Generated lip-synced avatar video (512x512, 25 FPS).")
    seed: int = Field(..., description="The seed used for generation.")
    duration: float = Field(..., description="Video duration in seconds.")
    timings: Timings | None = Field(None, description="Timing breakdown.")


FlashHeadAudioResponse = FlashHeadResponse
