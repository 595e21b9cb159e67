"""ElevenLabs TTS ("Create speech with timing"): audio plus a character alignment.

POST {base_url}/v1/text-to-speech/{voice_id}/with-timestamps?output_format=pcm_16000
header xi-api-key; body {text, model_id, voice_settings: {stability, similarity_boost}, seed}.
Answer: {audio_base64: raw 16-bit little-endian mono PCM at 16 kHz,
         alignment / normalized_alignment: {characters, character_start_times_seconds,
                                            character_end_times_seconds}}.
The characters become the phoneme timeline (phoneme_set "letters"; digraphs such as "th" merged).
Bounded: every try has TIMEOUT_S, the whole synthesis (retries included) deadline_s; 429 and 5xx
answers and connection errors are retried (max_tries, exponential backoff, Retry-After honoured).
A 429 that outlasts the retries is RateLimited (503 + Retry-After: clients retry), not an input error.
"""
from __future__ import annotations

import base64
import binascii
import random
import time

import httpx
import numpy as np

from flashhead import constants as C
from flashhead.errors import BackendUnavailable, FlashheadError, InputError, RateLimited
from flashhead.speech.base import Phoneme, Speech, TTSEngine
from flashhead.speech.espeak import PAD_SECONDS, PAUSE, check_stability, clean_text
from flashhead.speech.voices import resolve_voice
from flashhead.visemes.mapping import letter_units

DEFAULT_MODEL = "eleven_multilingual_v2"
SIMILARITY_BOOST = 0.75
OUTPUT_FORMAT = "pcm_16000"
TIMEOUT_S = 60.0
DEADLINE_S = 120.0         # Settings.elevenlabs_deadline_s
MAX_TRIES = 4              # Settings.elevenlabs_max_tries
BACKOFF_S = 0.5            # first pause between tries; doubles each time (+ up to 50 % jitter)
RETRY_STATUS = (429, 500, 502, 503, 504)


class ElevenLabsEngine(TTSEngine):
    name = "elevenlabs"

    def __init__(self, api_key: str, base_url: str = "https://api.elevenlabs.io",
                 model_id: str = DEFAULT_MODEL, timeout_s: float = TIMEOUT_S, *,
                 deadline_s: float = DEADLINE_S, max_tries: int = MAX_TRIES,
                 backoff_s: float = BACKOFF_S) -> None:
        if not api_key:
            raise BackendUnavailable("ElevenLabs needs an API key (ELEVENLABS_API_KEY)")
        self.model_id = model_id
        self.timeout_s, self.deadline_s = timeout_s, deadline_s
        self.max_tries, self.backoff_s = max(1, max_tries), backoff_s
        self._client = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s,
                                    headers={"xi-api-key": api_key})

    def close(self) -> None:
        self._client.close()

    def synthesize(self, text: str, voice: str = C.DEFAULT_VOICE,
                   stability: float = C.DEFAULT_STABILITY, seed: int = 0) -> Speech:
        """stability is passed to ElevenLabs' voice_settings.stability unchanged."""
        v = resolve_voice(voice)
        s = check_stability(stability)
        body = {"text": clean_text(text), "model_id": self.model_id,
                "voice_settings": {"stability": s, "similarity_boost": SIMILARITY_BOOST},
                "seed": int(seed) % 4294967296}
        data = self._post(f"/v1/text-to-speech/{v.voice_id}/with-timestamps", body)
        audio, phonemes = parse_response(data)
        meta = {"engine": self.name, "phoneme_set": "letters", "voice": v.name,
                "voice_id": v.voice_id, "stability": s, "seed": seed}
        return _pad(audio, phonemes, meta)

    def _post(self, path: str, body: dict) -> dict:
        deadline = time.monotonic() + self.deadline_s
        for attempt in range(1, self.max_tries + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                r = self._client.post(path, params={"output_format": OUTPUT_FORMAT}, json=body,
                                      timeout=min(self.timeout_s, left))
            except httpx.HTTPError as e:
                error: FlashheadError = BackendUnavailable(f"ElevenLabs unreachable: {e}")
                wait = None
            else:
                if r.status_code == 200:
                    return _json(r)
                error = _error(r)
                if r.status_code not in RETRY_STATUS:
                    raise error
                wait = _retry_after(r)
            if attempt == self.max_tries:
                raise error
            pause = wait if wait is not None else self.backoff_s * 2 ** (attempt - 1) * (1 + random.random() / 2)
            if time.monotonic() + pause >= deadline:
                raise error
            time.sleep(pause)
        raise BackendUnavailable(f"ElevenLabs did not answer within the {self.deadline_s:g} s deadline")


def _json(r: httpx.Response) -> dict:
    try:
        return r.json()
    except ValueError as e:
        raise BackendUnavailable("ElevenLabs answered with invalid JSON") from e


def _retry_after(r: httpx.Response) -> float | None:
    """Retry-After in seconds (the HTTP-date form is ignored: the backoff applies)."""
    try:
        return max(0.0, float(r.headers.get("retry-after", "")))
    except ValueError:
        return None


def _error(r: httpx.Response) -> FlashheadError:
    try:
        detail = r.json().get("detail", r.text)
    except ValueError:
        detail = r.text
    if isinstance(detail, dict):
        detail = detail.get("message", detail)
    msg = f"ElevenLabs HTTP {r.status_code}: {str(detail)[:300]}"
    if r.status_code in (400, 422):
        return InputError(msg, field="text")
    if r.status_code == 429:
        return RateLimited(f"{msg} (rate limit or quota; retried)")
    return BackendUnavailable(msg)   # 401/403 bad key, 5xx outage, anything else


def parse_response(data: dict) -> tuple[np.ndarray, list[Phoneme]]:
    """ElevenLabs JSON -> (float32 16 kHz audio, letter timeline)."""
    try:
        pcm = base64.b64decode(data["audio_base64"], validate=True)
    except (KeyError, TypeError, binascii.Error) as e:
        raise BackendUnavailable("ElevenLabs answer has no valid audio_base64") from e
    audio = np.frombuffer(pcm[: len(pcm) // 2 * 2], "<i2").astype(np.float32) / 32768.0
    align = data.get("normalized_alignment") or data.get("alignment")
    return audio, alignment_to_phonemes(align) if align else []


def alignment_to_phonemes(align: dict) -> list[Phoneme]:
    """Character alignment -> Phonemes (one per character or digraph, times in seconds)."""
    try:
        chars = list(align["characters"])
        starts = [float(x) for x in align["character_start_times_seconds"]]
        ends = [float(x) for x in align["character_end_times_seconds"]]
    except (KeyError, TypeError, ValueError) as e:
        raise BackendUnavailable("ElevenLabs alignment is malformed") from e
    if not len(chars) == len(starts) == len(ends):
        raise BackendUnavailable("ElevenLabs alignment arrays differ in length")
    out = []
    for a, b, symbol in letter_units(chars):
        start, end = starts[a], max(ends[b - 1], starts[a])
        if out and start < out[-1].start:          # keep the timeline monotonic
            start = out[-1].start
        out.append(Phoneme(symbol, start, max(end, start)))
    return out


def _pad(audio: np.ndarray, phonemes: list[Phoneme], meta: dict) -> Speech:
    """Add PAD_SECONDS of silence at both ends so the mouth starts and ends closed."""
    pad = int(PAD_SECONDS * C.SAMPLE_RATE)
    audio = np.concatenate([np.zeros(pad, np.float32), audio, np.zeros(pad, np.float32)])
    total = len(audio) / C.SAMPLE_RATE
    shifted = [Phoneme(p.symbol, p.start + PAD_SECONDS, p.end + PAD_SECONDS) for p in phonemes]
    last = shifted[-1].end if shifted else PAD_SECONDS
    timeline = [Phoneme(PAUSE, 0.0, PAD_SECONDS), *shifted, Phoneme(PAUSE, min(last, total), total)]
    return Speech(audio=audio, phonemes=timeline, meta=meta)
