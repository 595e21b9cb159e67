"""Settings from the environment (FLASHHEAD_*), validated once."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from flashhead import constants as C


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLASHHEAD_", extra="ignore")

    data_dir: Path = Field(Path("./flashhead-data"), description="job store, files, keys")
    renderer: str = Field("cpu", description="cpu | flashhead-lite | flashhead-pro")
    weights_dir: Path | None = Field(None, description="official checkpoint folder (neural renderers)")
    tts: str = Field("auto", description="auto (elevenlabs if ELEVENLABS_API_KEY else espeak) | espeak | elevenlabs")
    elevenlabs_base_url: str = Field("https://api.elevenlabs.io", description="ElevenLabs API root")
    # URL fetching (SSRF guard). Comma-separated hosts/CIDRs that may be fetched even though
    # they are loopback/private, e.g. "127.0.0.1,localhost" for tests.
    fetch_allow: str = Field("", description="SSRF allow-list exceptions")
    fetch_timeout_s: float = Field(C.FETCH_TIMEOUT_S, gt=0)
    max_image_bytes: int = Field(C.MAX_IMAGE_BYTES, gt=0)
    max_image_pixels: int = Field(C.MAX_IMAGE_PIXELS, gt=0)
    max_audio_bytes: int = Field(C.MAX_AUDIO_BYTES, gt=0)
    max_audio_seconds: float = Field(C.MAX_AUDIO_SECONDS, gt=0)
    public_url: str | None = Field(None, description="base URL used in returned file URLs")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
