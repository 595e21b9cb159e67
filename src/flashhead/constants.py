"""Domain constants, derived from each other: type a number once."""
from __future__ import annotations

SAMPLE_RATE = 16_000          # Hz, mono: the pipeline's one audio rate (TTS, uploads, wav2vec2)
FPS = 25                      # video frames per second
SIZE = 512                    # output frame side in pixels
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS   # 640 audio samples per video frame
FRAME_SECONDS = 1.0 / FPS

CHUNK_FRAMES = 8              # frames per streamed chunk (320 ms): small first chunk, few chunks
CHUNK_SAMPLES = CHUNK_FRAMES * SAMPLES_PER_FRAME

MAX_TEXT_CHARS = 5_000
MAX_AUDIO_SECONDS = 600.0     # default upper bound for uploaded audio (configurable)
MAX_IMAGE_BYTES = 25 * 1024 * 1024
MAX_IMAGE_PIXELS = 50_000_000  # decompression-bomb guard (a 8K x 6K photo is ~48 MP)
MAX_AUDIO_BYTES = 100 * 1024 * 1024
FETCH_TIMEOUT_S = 20.0

# Face crop rule from the reference: square side = 2.0 x face width,
# 55% of the side above the face centre and 45% below it.
CROP_SCALE = 2.0
CROP_ABOVE = 0.55

DEFAULT_VOICE = "Aria"
DEFAULT_STABILITY = 0.5
VOICES = (
    "Aria", "Roger", "Sarah", "Laura", "Charlie", "George", "Callum", "River", "Liam",
    "Charlotte", "Alice", "Matilda", "Will", "Jessica", "Eric", "Chris", "Brian", "Daniel",
    "Lily", "Bill",
)

TEXT_ENDPOINT = "fal-ai/flashhead"
AUDIO_ENDPOINT = "fal-ai/flashhead/audio"
