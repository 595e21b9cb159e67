"""Pick the TTS engine from the settings: ElevenLabs when a key is set, else espeak-ng."""
from __future__ import annotations

import os
import threading

from flashhead.config import Settings
from flashhead.errors import BackendUnavailable
from flashhead.speech.base import TTSEngine

_engines: dict[tuple, TTSEngine] = {}
_lock = threading.Lock()


def engine_choice(settings: Settings) -> str:
    """'elevenlabs' or 'espeak' for settings.tts in auto | espeak | elevenlabs."""
    choice = settings.tts.strip().lower()
    if choice == "auto":
        return "elevenlabs" if os.environ.get("ELEVENLABS_API_KEY") else "espeak"
    if choice not in ("espeak", "elevenlabs"):
        raise BackendUnavailable(f"unknown TTS engine {settings.tts!r}; use auto, espeak or elevenlabs")
    return choice


def get_engine(settings: Settings) -> TTSEngine:
    """The engine for these settings, created once per (engine, base URL, key) and reused."""
    choice = engine_choice(settings)
    key = os.environ.get("ELEVENLABS_API_KEY", "")
    cache_key = (choice, settings.elevenlabs_base_url, key) if choice == "elevenlabs" else (choice,)
    with _lock:
        if cache_key not in _engines:
            _engines[cache_key] = _create(choice, settings, key)
        return _engines[cache_key]


def _create(choice: str, settings: Settings, key: str) -> TTSEngine:
    if choice == "elevenlabs":
        from flashhead.speech.elevenlabs import ElevenLabsEngine
        return ElevenLabsEngine(key, base_url=settings.elevenlabs_base_url,
                                deadline_s=settings.elevenlabs_deadline_s,
                                max_tries=settings.elevenlabs_max_tries)
    from flashhead.speech.espeak import EspeakEngine
    return EspeakEngine()
