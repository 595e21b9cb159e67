"""Offline TTS with the libespeak-ng bundled by the `espeakng-loader` wheel (ctypes, no system package).

espeak-ng runs in synchronous retrieval mode: a callback receives the 22050 Hz samples and the
events, among them one PHONEME event per phoneme with its sample offset, which gives the phoneme
timeline the viseme mapper needs. libespeak keeps global state, so one lock serialises synthesis.
"""
from __future__ import annotations

import _ctypes
import ctypes
import math
import os
import re
import shutil
import tempfile
import threading
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.signal import resample_poly

from flashhead import constants as C
from flashhead.errors import BackendUnavailable, InputError, LimitExceeded
from flashhead.speech.base import Phoneme, Speech, TTSEngine
from flashhead.speech.voices import Voice, resolve_voice

PAD_SECONDS = 0.15          # silence before and after speech: the mouth starts and ends closed
PAUSE = "_"                 # symbol of the padding pauses (espeak's own pause symbol)
RATE_JITTER = 0.15          # max relative rate change per sentence at stability 0
PITCH_JITTER = 12           # max espeakPITCH change per sentence at stability 0

# speak_lib.h (API revision 12)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_RATE, _PITCH, _RANGE = 1, 3, 4


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


@dataclass
class _Take:
    """What the callback collected for one espeak_Synth call."""

    chunks: list
    events: list  # (sample offset at espeak's rate, phoneme symbol)


RAND_SEED = 20_240_601


class _Espeak:
    """libespeak-ng, loaded afresh for every synthesis.

    libespeak keeps hidden state that evolves from call to call, and seeds its noise generator
    from the clock. A private copy of the library per request (~4 ms) resets the first; a
    constant espeak_ng_SetRandSeed the second. Together they make output reproducible.
    One lock serialises synthesis: the callback and the library are process-global.
    """

    def __init__(self) -> None:
        try:
            import espeakng_loader
            self.lib_path = espeakng_loader.get_library_path()
            self.data = espeakng_loader.get_data_path().encode()
        except (ImportError, RuntimeError) as e:
            raise BackendUnavailable(f"espeakng-loader is not usable: {e}") from e
        self.lock = threading.Lock()
        self._take: _Take | None = None
        self._callback = _Callback(self._on_synth)  # keep a reference: C holds the pointer
        with self.lock, self.session():
            pass                                    # fail early if the library cannot start

    @contextmanager
    def session(self):
        """A freshly initialised library instance (caller holds self.lock). The private copy
        lives only until it is loaded (the mapping stays valid), in a folder removed with it, so
        no process leaves a flashhead-espeak-* folder behind."""
        try:
            with tempfile.TemporaryDirectory(prefix="flashhead-espeak-") as folder:
                copy = os.path.join(folder, "libespeak-ng.so")
                shutil.copyfile(self.lib_path, copy)
                lib = ctypes.CDLL(copy)
        except OSError as e:
            raise BackendUnavailable(f"libespeak-ng could not be loaded: {e}") from e
        try:
            lib.espeak_Initialize.restype = ctypes.c_int
            flags = _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT
            self.rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data, flags)
            if self.rate <= 0:
                raise BackendUnavailable(f"espeak_Initialize failed ({self.rate})")
            lib.espeak_SetSynthCallback(self._callback)
            # Initialisation seeds espeak's noise generator from the clock, so the same request
            # would sound different a second later: seed it with a constant instead.
            lib.espeak_ng_SetRandSeed(ctypes.c_long(RAND_SEED))
            yield lib
        finally:
            lib.espeak_Terminate()
            _ctypes.dlclose(lib._handle)

    def _on_synth(self, wav, n, events) -> int:
        take = self._take
        if n > 0:
            take.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EVENT_PHONEME:
                take.events.append((ev.sample, ev.id.string.decode("utf-8", "replace")))
            i += 1
        return 0

    def speak(self, lib, text: str, spec: str, pitch: int, rate: int, range_: int,
              end_pause: bool) -> _Take:
        """Synthesise one piece of text within a session()."""
        if lib.espeak_SetVoiceByName(spec.encode()) != 0:
            raise BackendUnavailable(f"espeak voice {spec!r} not available")
        for param, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, range_)):
            lib.espeak_SetParameter(param, int(value), 0)
        self._take = take = _Take([], [])
        data = text.encode("utf-8") + b"\0"
        try:
            flags = _CHARS_UTF8 | (_ENDPAUSE if end_pause else 0)
            err = lib.espeak_Synth(data, len(data), 0, 0, 0, flags, None, None)
        finally:
            self._take = None
        if err != 0:
            raise BackendUnavailable(f"espeak_Synth failed ({err})")
        return take


@lru_cache(maxsize=1)
def _espeak() -> _Espeak:
    return _Espeak()


def clean_text(text: object) -> str:
    """Validate and normalise input text: NFC, control/format characters become spaces."""
    if not isinstance(text, str):
        raise InputError("text must be a string", field="text")
    if len(text) > C.MAX_TEXT_CHARS:
        raise LimitExceeded(f"text is {len(text)} characters; the limit is {C.MAX_TEXT_CHARS}",
                            field="text")
    text = unicodedata.normalize("NFC", text)
    # Cc control, Cf format (bidi marks, zero-width), Cs lone surrogates, Co private use
    text = "".join(" " if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co") else ch
                   for ch in text)
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        raise InputError("text is empty", field="text")
    return text


def split_sentences(text: str) -> list[str]:
    """Sentences end at . ! ? (and their CJK forms) followed by space; keeps the punctuation."""
    parts = re.split(r"(?<=[.!?\u3002\uff01\uff1f])\s+", text)
    return [p for p in parts if p.strip()]


def check_stability(stability: object) -> float:
    try:
        s = float(stability)
    except (TypeError, ValueError):
        raise InputError("stability must be a number", field="stability") from None
    if not 0.0 <= s <= 1.0:
        raise InputError(f"stability must be within 0..1, got {s}", field="stability")
    return s


def prosody(voice: Voice, stability: float, seed: int, n: int) -> list[tuple[int, int, int]]:
    """(pitch, rate, range) per sentence. See EspeakEngine.synthesize for the rule."""
    rng = np.random.default_rng([abs(int(seed)), n])
    spread = 1.0 - stability
    range_ = int(np.clip(round(voice.range * 2.0 * spread), 0, 100))
    out = []
    for u_pitch, u_rate in rng.uniform(-1.0, 1.0, size=(n, 2)):
        pitch = int(np.clip(round(voice.pitch + PITCH_JITTER * spread * u_pitch), 0, 100))
        rate = int(round(voice.rate * (1.0 + RATE_JITTER * spread * u_rate)))
        out.append((pitch, rate, range_))
    return out


UNVOICED_STOPS = frozenset({"p", "t", "k", "tS"})
CLOSURE_MAX_S = 0.09        # the longest stop closure moved out of the preceding phoneme
CLOSURE_WIN_S = 0.005       # RMS window that finds the closure's silence
CLOSURE_QUIET = 0.05        # silent: RMS below this share of the take's 95th percentile
_STRESS = re.compile(r"['\",%=]")


def _window_rms(x: np.ndarray, win: int) -> np.ndarray:
    """RMS of consecutive `win`-sample windows of int16 audio, aligned to the END of x."""
    n = len(x) // win
    tail = x[len(x) - n * win:].astype(np.float32) / 32768.0
    return np.sqrt((tail.reshape(n, win) ** 2).mean(1))


def _closure_start(audio: np.ndarray, rate: int, event: int, floor: int, quiet: float) -> int:
    """Sample where the silence that ends at a stop's event began (never before `floor`).

    espeak reports an unvoiced stop (p t k) at its burst: the closure before it, 40-60 ms of
    silence, is counted in the preceding phoneme, so the lips would close (p) or the jaw rise
    (t k) only when the sound is already back. Walk back over silent windows to the closure's
    start instead.
    """
    win = max(1, int(rate * CLOSURE_WIN_S))
    rms = _window_rms(audio[max(floor, event - int(rate * CLOSURE_MAX_S)):event], win)
    loud = np.flatnonzero(rms >= quiet)
    silent_tail = len(rms) - (loud[-1] + 1 if len(loud) else 0)
    return event - silent_tail * win


def _timeline(take: _Take, offset: float, rate: int, audio: np.ndarray) -> list[Phoneme]:
    """Phoneme events -> Phonemes; each ends where the next starts (the last at the take's end).

    An unvoiced stop starts where its closure's silence starts (see _closure_start)."""
    events = [list(e) for e in take.events]
    rms = _window_rms(audio, max(1, int(rate * CLOSURE_WIN_S)))
    quiet = CLOSURE_QUIET * float(np.percentile(rms, 95)) if len(rms) else 0.0
    for i in range(1, len(events)):
        if _STRESS.sub("", events[i][1]) in UNVOICED_STOPS:
            prev = events[i - 1][0]
            floor = prev + int(0.3 * max(events[i][0] - prev, 0))   # the previous keeps 30%
            events[i][0] = _closure_start(audio, rate, events[i][0], floor, quiet)
    starts = [(s / rate, sym) for s, sym in events]
    end_of_take = len(audio) / rate
    out = []
    for i, (start, sym) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else end_of_take
        start, end = min(start, end_of_take), min(max(end, start), end_of_take)
        out.append(Phoneme(sym, offset + start, offset + end))
    return out


class EspeakEngine(TTSEngine):
    """espeak-ng TTS with a phoneme timeline. Output: float32 mono 16 kHz."""

    name = "espeak"

    def __init__(self) -> None:
        self._es = _espeak()

    def synthesize(self, text: str, voice: str = C.DEFAULT_VOICE,
                   stability: float = C.DEFAULT_STABILITY, seed: int = 0) -> Speech:
        """Speak `text` with one of the 20 voices.

        stability (0..1) sets how much the prosody varies, like ElevenLabs' setting of the same name:
        - pitch range (espeakRANGE) = 2 * (1 - stability) * the voice's range, so 0.5 gives the
          voice's natural intonation, 0 twice as much, 1.0 a monotone;
        - each sentence gets its own pitch offset (up to +-PITCH_JITTER * (1 - stability)) and
          rate factor (up to +-RATE_JITTER * (1 - stability)), drawn from `seed`; at 1.0 every
          sentence is spoken at the voice's steady pitch and rate.
        The same text, voice, stability and seed always give the same audio.
        """
        v = resolve_voice(voice)
        s = check_stability(stability)
        sentences = split_sentences(clean_text(text))
        plan = list(zip(sentences, prosody(v, s, seed, len(sentences))))
        with self._es.lock, self._es.session() as lib:
            # espeak pauses after a sentence only when told to (ENDPAUSE); the last one gets padding
            takes = [self._es.speak(lib, t, v.espeak, *p, end_pause=i + 1 < len(plan))
                     for i, (t, p) in enumerate(plan)]
        return self._assemble(takes, v, s, seed)

    def _assemble(self, takes: list[_Take], v: Voice, s: float, seed: int) -> Speech:
        rate = self._es.rate
        pad = int(round(PAD_SECONDS * rate))
        parts, phonemes, pos = [np.zeros(pad, np.int16)], [Phoneme(PAUSE, 0.0, PAD_SECONDS)], pad
        for take in takes:
            audio = np.concatenate(take.chunks) if take.chunks else np.zeros(0, np.int16)
            phonemes += _timeline(take, pos / rate, rate, audio)
            parts.append(audio)
            pos += len(audio)
        parts.append(np.zeros(pad, np.int16))
        wav = np.concatenate(parts).astype(np.float32) / 32768.0
        g = math.gcd(C.SAMPLE_RATE, rate)
        audio = resample_poly(wav, C.SAMPLE_RATE // g, rate // g).astype(np.float32)
        audio = np.clip(audio, -1.0, 1.0)
        total = len(audio) / C.SAMPLE_RATE
        phonemes.append(Phoneme(PAUSE, min(pos / rate, total), total))
        meta = {"engine": self.name, "phoneme_set": "espeak", "voice": v.name, "espeak_voice": v.espeak,
                "stability": s, "seed": seed}
        return Speech(audio=audio, phonemes=phonemes, meta=meta)
