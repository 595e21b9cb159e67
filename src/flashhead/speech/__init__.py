"""Speech: TTS engines (espeak-ng offline, ElevenLabs with a key) and the 20 voices."""
from flashhead.speech.base import Phoneme, Speech, TTSEngine
from flashhead.speech.factory import get_engine
from flashhead.speech.voices import VOICES, Voice, resolve_voice

__all__ = ["Phoneme", "Speech", "TTSEngine", "VOICES", "Voice", "get_engine", "resolve_voice"]
