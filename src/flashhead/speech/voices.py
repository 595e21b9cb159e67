"""The 20 seed voices: ElevenLabs premade voice ids plus an espeak-ng rendition of each.

The espeak rendition is a stand-in used when no ElevenLabs key is configured. Each voice gets its
own combination of accent (espeak language), variant (formants and base pitch: +f* female,
+m* male) and relative pitch/rate, so that no two voices sound alike.
"""
from __future__ import annotations

from dataclasses import dataclass

from flashhead import constants as C
from flashhead.errors import InputError


@dataclass(frozen=True)
class Voice:
    name: str        # the public name, one of constants.VOICES
    voice_id: str    # ElevenLabs premade voice id
    gender: str      # "female" | "male" | "neutral"
    accent: str      # as ElevenLabs describes it
    espeak: str      # espeak-ng voice spec "<voice file name>+<variant>" ("en" is British)
    pitch: int       # espeakPITCH 0..100 (50 = the variant's own base pitch)
    rate: int        # espeakRATE, words per minute (espeak's default is 175)
    range: int       # espeakRANGE 0..100 at stability 0.5 (50 = espeak's default)


_V = Voice
_TABLE = (
    _V("Aria", "9BWtsMINqrJLrRacOk9x", "female", "American", "en-us+f3", 55, 172, 55),
    _V("Roger", "CwhRBWXzGAHq8TQ4Fs17", "male", "American", "en-us+m3", 45, 170, 50),
    _V("Sarah", "EXAVITQu4vr4xnSDxMaL", "female", "American", "en-us+f2", 50, 165, 50),
    _V("Laura", "FGY2WhTYpPnrIDTdsKH5", "female", "American", "en-us+f4", 62, 182, 60),
    _V("Charlie", "IKne3meq5aSn9XLyUdCD", "male", "Australian", "en-gb-x-gbclan+m2", 52, 182, 55),
    _V("George", "JBFqnCBsd6RMkjVDRZzb", "male", "British", "en-gb-x-rp+m1", 40, 158, 45),
    _V("Callum", "N2lVS1w4EtoT3dr4eOWO", "male", "American", "en-us+m7", 50, 176, 55),
    _V("River", "SAz9YHcvj6GT2YYXdXww", "neutral", "American", "en-us+f1", 20, 170, 40),
    _V("Liam", "TX3LPaxmHKxFdv7VOQHJ", "male", "American", "en-us+m2", 56, 186, 55),
    _V("Charlotte", "XB0fDUnXU5powFXDhCwa", "female", "Swedish/British", "en-gb-x-rp+f5", 52, 160, 50),
    _V("Alice", "Xb7hH8MSUJpSbSDYk0k2", "female", "British", "en+f1", 58, 170, 50),
    _V("Matilda", "XrExE9yKIg1WjnnlVkGX", "female", "American", "en-us+f5", 45, 166, 45),
    _V("Will", "bIHbv24MWmeRgasZH58o", "male", "American", "en-us-nyc+m6", 54, 180, 60),
    _V("Jessica", "cgSgspJ2msm6clMCkdW9", "female", "American", "en-us+steph", 55, 185, 60),
    _V("Eric", "cjVigY5qzO86Huf0OWal", "male", "American", "en-us+m4", 48, 168, 45),
    _V("Chris", "iP95p4xoKVk53GoZ742B", "male", "American", "en-us+m5", 50, 178, 50),
    _V("Brian", "nPczCjzI2devNBz1zQrb", "male", "American", "en-us+m1", 36, 160, 40),
    _V("Daniel", "onwK4e9ZLuTAKqWW03F9", "male", "British", "en+m3", 42, 165, 45),
    _V("Lily", "pFZP5JQG7iQjIQuC4Bku", "female", "British", "en-gb-x-gbcwmd+f2", 60, 175, 55),
    _V("Bill", "pqHfZKP75CvOlQylNhV4", "male", "American", "en-us+m8", 44, 155, 40),
)
VOICES: dict[str, Voice] = {v.name: v for v in _TABLE}
assert tuple(VOICES) == C.VOICES, "voice table out of sync with constants.VOICES"


def resolve_voice(name: str) -> Voice:
    """Look a voice up by its public name (exact, then case-insensitive)."""
    if isinstance(name, str):
        voice = VOICES.get(name) or VOICES.get(name.strip().capitalize())
        if voice is not None:
            return voice
    raise InputError(f"unknown voice {name!r}; valid voices: {', '.join(C.VOICES)}", field="voice")
