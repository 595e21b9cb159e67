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
MAX_URL_CHARS = 8_192         # an http(s) input or webhook URL (data: URIs are bounded by their bytes)
SEED_MIN, SEED_MAX = -(2 ** 63), 2 ** 63 - 1   # int64: what msgpack, SQLite and Redis carry
MAX_AUDIO_SECONDS = 600.0     # default upper bound for uploaded audio (configurable)
MAX_IMAGE_BYTES = 25 * 1024 * 1024
MAX_IMAGE_PIXELS = 50_000_000  # decompression-bomb guard (a 8K x 6K photo is ~48 MP)
MAX_AUDIO_BYTES = 100 * 1024 * 1024
FETCH_TIMEOUT_S = 20.0
PORTRAIT_CACHE_SIZE = 16      # distinct portraits a render process keeps prepared

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

# Live sessions (flashhead.live): PCM16 audio pushed as it is spoken, video chunks on one clock.
LIVE_CHUNK_FRAMES = CHUNK_FRAMES          # 320 ms: a whole number of AAC frames (5 x 1024 samples)
LIVE_LEAD_S = CHUNK_FRAMES * FRAME_SECONDS  # paced chunks leave at most this long before their media time
LIVE_MAX_QUEUE_S = 120.0                  # audio a client may queue ahead of the render clock
LIVE_INTERRUPT_S = 0.2                    # an interrupt reaches idle video within this bound
PCM_BYTES_PER_SAMPLE = 2                  # live audio is PCM16 little-endian mono at SAMPLE_RATE
REALTIME_IDLE_TIMEOUT_S = 60.0            # a realtime socket with no client message this long: TIMEOUT

# Neural FlashHead streaming (SoulX-FlashHead): one DiT chunk covers NEURAL_CHUNK_FRAMES pixel frames;
# wav2vec2 sees a rolling window of NEURAL_AUDIO_BUFFER_SECONDS of audio (silence at start).
NEURAL_CHUNK_FRAMES = 33
NEURAL_AUDIO_BUFFER_SECONDS = 8
NEURAL_AUDIO_BUFFER_SAMPLES = NEURAL_AUDIO_BUFFER_SECONDS * SAMPLE_RATE        # 128,000
NEURAL_AUDIO_BUFFER_FRAMES = NEURAL_AUDIO_BUFFER_SECONDS * FPS                 # 200
NEURAL_AUDIO_RADIUS = 2       # each frame sees audio frames -2..+2
