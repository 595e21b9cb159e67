"""Settings from the environment (FLASHHEAD_*), validated once."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from flashhead import constants as C


DEVICE_PATTERN = r"^(cpu|cuda(:[0-9]{1,2})?)$"     # --device / FLASHHEAD_DEVICE

class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLASHHEAD_", extra="ignore")

    data_dir: Path = Field(Path("./flashhead-data"), description="job store, files, keys")
    renderer: str = Field("cpu", description="cpu | flashhead-lite | flashhead-pro")
    weights_dir: Path | None = Field(None, description="official checkpoint folder (neural renderers)")
    device: str = Field("cuda", pattern=DEVICE_PATTERN, description="neural renderers: the torch device of "
                        "the engine's model copy: cuda (the first GPU), cuda:N or cpu")
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
    # Off by default: on the 10 s sample the hints sealed 4 bilabials but lowered the sync
    # correlation 0.93 -> 0.91 and the silent-closed share 0.95 -> 0.92 (bench/quality.py).
    phones_max_seconds: float = Field(0.0, ge=0, description="offline uploads up to this long get "
                                      "pocketsphinx bilabial hints for lip closures (0 = never)")
    public_url: str | None = Field(None, description="base URL used in returned file URLs")
    # Service (flashhead serve)
    workers: int = Field(1, ge=1, description="render workers")
    worker_mode: str | None = Field(None, description="process | thread; default: process, or thread when "
                                    "the app is built around given engines (tests)")
    worker_nice: int = Field(10, ge=0, le=19, description="CPU niceness of worker processes (0 = off)")
    job_store: str = Field("sqlite", description="sqlite (file in data_dir) or a redis:// URL")
    redis_prefix: str = Field("flashhead:", description="key prefix in a shared redis")
    job_lease_s: float = Field(10.0, ge=1, description="redis job store: a server silent this long is "
                               "gone, and other servers re-queue its running jobs")
    # Auth state shared by several servers (see README "Several machines")
    keys_store: str | None = Field(None, description="API keys: sqlite (data_dir/keys.db) | redis (the "
                                   "job store's redis) | a redis:// URL; default: redis when job_store is")
    jwt_secret: str | None = Field(None, description="HS256 secret of realtime/upload tokens (32+ chars); "
                                   "default: data_dir/jwt_secret, or one kept in the keys' redis")
    storage: str = Field("local", description="local (data_dir/files) | s3")
    s3_bucket: str = Field("flashhead", description="S3 bucket (storage=s3)")
    s3_prefix: str = Field("files/", description="key prefix in the bucket")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, R2...)")
    s3_region: str | None = Field(None, description="S3 region")
    webhook_max_tries: int = Field(10, ge=1, description="webhook deliveries before giving up")
    realtime_idle_timeout_s: float = Field(60.0, gt=0, description="close a silent realtime socket after")
    webhook_retry_window_s: float = Field(7200.0, gt=0, description="span of the retries (backoff)")
    # --- webhook delivery and the redis job store ---
    webhook_timeout_s: float = Field(10.0, gt=0, description="one webhook delivery, connect to last byte")
    webhook_concurrency: int = Field(8, ge=1, le=64, description="webhook deliveries in flight at once")
    webhook_concurrency_per_receiver: int = Field(4, ge=1, le=64, description="webhook deliveries in flight "
                                                  "to one receiver (scheme, host, port), and for one API key's "
                                                  "jobs: receivers that hang hold this many senders each")
    webhook_max_response_bytes: int = Field(64 * 1024, ge=0, description="read at most this much of a "
                                            "webhook receiver's answer")
    redis_socket_timeout_s: float = Field(5.0, gt=0, description="redis job store: connect and "
                                          "per-command timeout")
    # --- stored files ---
    files_url: str | None = Field(None, pattern=r"^https?://[^/?#@\s]+/?$",
                                  description="origin of returned /files URLs (e.g. https://files.example.com, "
                                  "routed to this server), to serve stored files from a separate origin")
    # --- auth and abuse limits ---
    token_ttl_s: float = Field(600.0, ge=10, le=3600, description="life of CDN upload tokens and signed "
                               "upload URLs, and the longest realtime token a client may ask for")
    rate_limit: str = Field("100/second;6000/minute", description="requests per API key, in the `limits` "
                            "package's notation ('N/second;M/minute'); empty = no limit")
    max_active_jobs_per_key: int = Field(100, ge=0, description="queued + running jobs one API key may "
                                         "have at once (0 = no limit)")
    # --- bounds and retention ---
    job_retention_s: float = Field(7 * 86400.0, gt=0, description="finished jobs and their logs are kept")
    result_retention_s: float = Field(7 * 86400.0, gt=0, description="result files (videos) are kept")
    upload_retention_s: float = Field(86400.0, gt=0, description="uploaded files are kept")
    staging_retention_s: float = Field(3600.0, gt=0, description="multipart staging and partial files")
    retention_sweep_s: float = Field(600.0, gt=0, description="the API process sweeps expired items every")
    max_body_bytes: int = Field(64 * 1024 * 1024, gt=0, description="JSON and other non-upload bodies, "
                                "and realtime WebSocket messages")
    realtime_read_ahead_messages: int = Field(4, ge=1, description="realtime WebSocket messages a socket "
                                              "reads ahead of its route (each up to max_body_bytes); more "
                                              "wait in the client's TCP window")
    anonymous_max_body_bytes: int = Field(64 * 1024, gt=0, description="with keys: the largest body of a "
                                          "request that carries no valid key or token (refused with 401 "
                                          "before more is read: only callers the server knows make it "
                                          "read and parse big bodies)")
    max_upload_bytes: int = Field(1024 ** 3, gt=0, description="one upload, or one multipart file in total")
    upload_reserve_bytes: int = Field(1024 ** 3, ge=0, description="uploads are refused (507 storage_full) "
                                      "while the disk holding the data dir has less than this free: space "
                                      "kept for results, so uploads cannot fill the disk every job needs")
    body_read_timeout_s: float = Field(60.0, gt=0, description="a request body must arrive within")
    elevenlabs_deadline_s: float = Field(120.0, gt=0, description="one ElevenLabs synthesis, retries included")
    elevenlabs_max_tries: int = Field(4, ge=1, description="ElevenLabs tries on 429 / 5xx")
    heap_trim_s: float = Field(10.0, ge=0, description="the API and render engine processes return freed "
                               "heap memory to the OS every (0 = off)")
    render_ahead_chunks: int = Field(2, ge=0, le=8, description="offline MP4: chunks a second thread renders "
                                     "while the encoder works on earlier ones (0 = render and encode in turn)")
    # --- neural renderer ---
    reference_crop: Literal["face", "cover"] = Field(
        "face", description="portrait -> 512 reference: face (detect, square around the face; any "
        "portrait) | cover (the original's default: cover 512x512 and centre-crop, no detection)")
    neural_posterior: Literal["sample", "mode"] = Field(
        "sample", description="Lite VAE latents: sample (the original's .sample(), seeded by the "
        "request seed) | mode (the posterior mean, the same for every seed)")
    # --- engine (render engine process, admission) ---
    engine_capacity: int | None = Field(None, ge=1, description="real-time sessions (/stream, realtime) one "
                                        "engine admits at once; default 4 per CPU core (cpu renderer) or 2 (neural)")
    engine_processes: int | None = Field(None, ge=1, le=256, description="CPU renderer: render processes "
                                         "in the engine (each session pinned to one); default: the CPU cores")
    engine_threads: int | None = Field(None, ge=1, description="render threads per render process; default: "
                                       "1 in a CPU pool, the CPU cores (cpu, one process) or at least the "
                                       "capacity (neural)")
    engine_capacity_mode: Literal["configured", "calibrate"] = Field(
        "configured", description="the engine's capacity: configured (engine_capacity, or its default) | "
        "calibrate (measured at each engine start by rendering a few chunks; see engine/calibrate.py)")
    engine_calibration_headroom: float = Field(0.7, gt=0, le=1, description="calibrate: the share of the "
                                               "measured real-time sessions the engine admits")
    engine_key_sessions: int = Field(4, ge=1, description="concurrent real-time sessions per API key (with "
                                     "engines on worker nodes: over every API node together)")
    engine_step_deadline_s: float = Field(30.0, gt=0, description="an engine silent this long while it has "
                                          "sessions running is hung: killed and restarted")
    engine_outbox_bytes: int = Field(16 * 2**20, ge=2**16, description="messages to an engine (API to "
                                     "engine, router to render process) it has not read yet: past "
                                     "this it counts as gone (hung), instead of blocking the sender")
    engine_retry_after_s: int = Field(5, ge=1, description="Retry-After of a 429 at capacity")
    realtime_max_idle_timeout_s: float = Field(600.0, gt=0, description="the largest idle_timeout a "
                                               "realtime client may ask for")
    http_head_timeout_s: float = Field(20.0, gt=0, description="a connection must send a whole request "
                                       "head within this of opening (or of its next request's first byte), "
                                       "else it is closed (slowloris)")
    http_keep_alive_s: float = Field(30.0, gt=5, le=600, description="an idle HTTP connection is closed "
                                     "after this. Longer than clients keep one (httpx, so fal-client: 5 s; "
                                     "aiohttp: 15 s; a load balancer in front: its idle timeout), so the "
                                     "client closes it first: a server that closes first races the "
                                     "client's next request, which then fails (a reset)")
    shutdown_grace_s: float = Field(5.0, ge=1, le=600, description="on SIGTERM, requests, SSE streams and "
                                    "uploads in flight get this long to finish; a stream still running "
                                    "1 s before it ends gets an error event (shutting_down) and ends")
    client_send_timeout_s: float = Field(15.0, gt=0, description="a client that takes nothing sent to it "
                                         "for this long (it stopped reading: SSE /stream, realtime "
                                         "WebSocket) loses its stream or live session and its engine slot")
    realtime_max_session_s: float = Field(3600.0, gt=0, description="the longest a realtime live session "
                                          "(start to stop) lives; then it ends with a TIMEOUT frame and "
                                          "the socket closes, freeing its engine slot")
    engine_max_pending_chunks: int = Field(100, ge=2, description="chunks the API holds for a live client that "
                                           "does not read them; beyond, its session ends (limit_exceeded)")
    # --- neural batching (the engine steps several sessions together) ---
    neural_batch_max: int = Field(16, ge=1, le=64, description="neural renderer: most sessions stepped "
                                  "together in one batch")
    neural_batch_window_s: float = Field(0.2, ge=0, le=5, description="neural renderer: how long a chunk "
                                         "step waits at most for the other running sessions' steps to join "
                                         "its batch (a lone session never waits)")
    # --- several machines (streams and live sessions on engine nodes, through Redis) ---
    engine_remote_ttl_s: float = Field(3.0, ge=0.5, le=60, description="several machines: an engine node "
                                       "silent this long is dead (its clients get engine_failed); a session "
                                       "its API node stops renewing this long is dropped and its slot freed")
    engine_remote_stream_maxlen: int = Field(1000, ge=10, description="several machines: messages a "
                                             "session's Redis stream keeps (MAXLEN)")
    engine_remote_stream_ttl_s: float = Field(120.0, ge=1, description="several machines: lifetime of a "
                                              "session's Redis stream, and of an engine's inbox, after "
                                              "its last message")
    engine_remote_redis_connections: int = Field(16, ge=1, le=1024, description="several machines: an API "
                                                 "node's pooled Redis connections for its sessions' short calls "
                                                 "(more wait for a free one); each session also reads its "
                                                 "engine's messages on a connection of its own, closed when it ends")
    # --- webrtc (WHEP output of live sessions) ---
    webrtc_chunk_frames: int = Field(1, ge=1, le=8, description="WebRTC live sessions: frames per engine "
                                     "chunk (40 ms): speech shows after this much audio (plus the 80 ms "
                                     "lookahead of the feature extractor)")
    webrtc_jitter_s: float = Field(0.06, ge=0, le=2, description="WebRTC: how long the API holds a chunk "
                                   "before it plays, to absorb render-time jitter (latency vs stalls)")
    webrtc_max_session_s: float = Field(3600.0, gt=0, description="WebRTC: the longest a WHEP session "
                                        "lives; then it ends (as a DELETE does)")
    webrtc_connect_timeout_s: float = Field(15.0, gt=0, le=120, description="WebRTC: a WHEP session whose "
                                            "peer does not connect within this ends")
    webrtc_max_buffer_s: float = Field(2.0, gt=0, le=30, description="WebRTC: media the API holds for a "
                                       "peer that does not take it; older media is dropped")
    webrtc_ice_servers: list[str] = Field(default_factory=list, description="WebRTC: STUN/TURN URLs "
                                          "(JSON list, e.g. [\"stun:stun.example.org:3478\"]); none by "
                                          "default: host candidates only")
    webrtc_ice_username: str | None = Field(None, description="WebRTC: TURN username")
    webrtc_ice_credential: str | None = Field(None, description="WebRTC: TURN credential")
    webrtc_max_sdp_bytes: int = Field(64 * 1024, ge=1024, description="WebRTC: the largest SDP offer")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
