"""NeuralRenderer: SoulX-FlashHead Lite/Pro behind the shared Renderer interface.

Latency: the model works in chunks of 28 (Pro) / 24 (Lite) new frames, so a span's frames
exist only once a whole chunk of its audio has arrived. render() still returns exactly
span.n_frames frames by keeping a frame queue that starts with `latency_frames`
(new_frames - 1: 27 Pro, 23 Lite) still frames of the reference portrait. Frame i of the
output therefore shows audio frame i - latency_frames: delay the audio track by
latency_frames / 25 s, and call flush(session) after the last span to get the final
latency_frames frames (the tail of the audio, completed with silence to a whole chunk).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from flashhead import constants as C
from flashhead.errors import BackendUnavailable, InputError
from flashhead.render.base import Renderer, SpeechSpan, check_idle_pose
from flashhead.render.cpu.motion import HeadRig
from flashhead.render.neural.batch import StepBatcher
from flashhead.render.neural.download import download_command, fetch_hint
from flashhead.render.neural.poses import PoseWarp, head_rig
from flashhead.render.neural.stream import VARIANTS, ChunkEngine, Portrait, StreamState, cover_crop


@dataclass(frozen=True)
class NeuralPortrait:
    model: Portrait                                  # the model's prepared reference
    head: HeadRig | None                             # idle poses' head warp (None: no face found)


@dataclass
class NeuralSession:
    state: StreamState
    pending: np.ndarray                              # audio not yet rendered (< one chunk)
    queue: deque = field(default_factory=deque)      # frames ready to emit, 512 x 512 x 3 uint8
    voiced: deque = field(default_factory=deque)     # per queued or pending frame: its audio's voicing
    poses: PoseWarp | None = None
    frames_out: int = 0


def _resize_frames(frames: np.ndarray, size: int) -> list[np.ndarray]:
    if frames.shape[1] == size:
        return list(frames)
    return [cv2.resize(f, (size, size), interpolation=cv2.INTER_LINEAR) for f in frames]


class NeuralRenderer(Renderer):
    """`flashhead-lite` / `flashhead-pro`. Weights load in setup(); errors are raised there."""

    def __init__(self, variant: str = "lite", weights_dir: str | Path | None = None, device: str = "cuda",
                 dtype: torch.dtype = torch.bfloat16, sample_posterior: bool | None = None,
                 engine: ChunkEngine | None = None, batch_max: int | None = None,
                 batch_window_s: float | None = None):
        """sample_posterior: Lite VAE latents drawn from the posterior (seeded) or its mode;
        None: Settings.neural_posterior. batch_max, batch_window_s: how concurrent sessions' chunk
        steps are batched (StepBatcher); None: Settings.neural_batch_max / neural_batch_window_s."""
        if variant not in VARIANTS:
            raise InputError(f"must be one of {sorted(VARIANTS)}, got {variant!r}", field="variant")
        self.variant = VARIANTS[variant]
        self.name = f"flashhead-{variant}"
        self.weights_dir = Path(weights_dir) if weights_dir else None
        self.device, self.dtype = device, dtype
        from flashhead.config import get_settings
        settings = get_settings()
        if sample_posterior is None:
            sample_posterior = settings.neural_posterior == "sample"
        self.sample_posterior = sample_posterior
        self.engine = engine
        self.batcher = StepBatcher(batch_max or settings.neural_batch_max,
                                   settings.neural_batch_window_s if batch_window_s is None else batch_window_s)

    @classmethod
    def tiny(cls, variant: str = "lite", size: int = 64, seed: int = 0, **kw) -> "NeuralRenderer":
        """A CPU renderer with tiny random weights (tests, smoke runs): frames are noise-like."""
        from flashhead.render.neural.tiny import build_tiny_engine
        return cls(variant, device="cpu", dtype=torch.float32, engine=build_tiny_engine(variant, size, seed), **kw)

    @property
    def latency_frames(self) -> int:
        return self.variant.new_frames - 1

    # -- setup ------------------------------------------------------------------------------------
    def setup(self) -> None:
        if self.engine is not None:
            return
        self._check_device()
        if self.weights_dir is None:
            raise BackendUnavailable(f"{self.name} needs --weights-dir pointing at the SoulX-FlashHead-1_3B "
                                     f"weights; fetch them with `{download_command(self.variant.name)}`",
                                     field="weights_dir")
        from flashhead.render.neural.weights import check_weights
        report = check_weights(self.weights_dir, self.variant.name)
        if not report.ok:
            raise BackendUnavailable(f"{report.format()}\n{fetch_hint(report, self.weights_dir)}",
                                     field="weights_dir")
        self.engine = self._load()

    def _check_device(self) -> None:
        if not str(self.device).startswith("cuda"):
            return
        if not torch.cuda.is_available():
            raise BackendUnavailable(f"{self.name} on device {self.device} needs an NVIDIA GPU with CUDA and none "
                                     "is available; use --renderer cpu (or --device cpu, very slow)", field="device")
        index, count = torch.device(self.device).index or 0, torch.cuda.device_count()
        if index >= count:
            have = f"cuda:0 to cuda:{count - 1}" if count else "none"
            raise BackendUnavailable(f"device {self.device} does not exist: this machine has {count} CUDA "
                                     f"device(s) ({have})", field="device")

    def _load(self) -> ChunkEngine:
        from flashhead.render.neural.audio import AudioEncoder, find_wav2vec2
        from flashhead.render.neural.vae import LTX_VAE_DIR, WAN_VAE_FILE, load_ltx_vae, load_wan_vae
        from flashhead.render.neural.weights import load_dit
        root = self.weights_dir
        dit = load_dit(root / self.variant.model_dir, self.device, self.dtype)
        if self.variant.name == "pro":
            vae = load_wan_vae(root / WAN_VAE_FILE, self.device, self.dtype)
        else:
            vae = load_ltx_vae(root / LTX_VAE_DIR, self.device, self.dtype, self.sample_posterior)
        audio = AudioEncoder.from_pretrained(find_wav2vec2(root)).to(self.device)   # fp32 like the original
        return ChunkEngine(dit, vae, audio, self.variant, self.device, self.dtype)

    def _engine(self) -> ChunkEngine:
        if self.engine is None:
            raise BackendUnavailable(f"{self.name}: setup() was not called", field="renderer")
        return self.engine

    # -- portraits and sessions ---------------------------------------------------------------------
    def prepare(self, image: np.ndarray, seed: int) -> NeuralPortrait:
        """image: the reference (the pipeline crops it: Settings.reference_crop). The seed is
        used per session (new_session), so one prepared portrait serves every seed."""
        model = self._engine().prepare(image)
        return NeuralPortrait(model, head_rig(cover_crop(image, C.SIZE)))

    def new_session(self, portrait: NeuralPortrait, seed: int) -> NeuralSession:
        state = self._engine().new_stream(portrait.model, seed)
        still = _resize_frames(portrait.model.image[None], C.SIZE)[0]
        lead = self.latency_frames
        poses = PoseWarp(portrait.head, seed) if portrait.head is not None else None
        return NeuralSession(state, np.zeros(0, np.float32), deque([still] * lead), deque([0.0] * lead), poses)

    def set_idle_pose(self, session: NeuralSession, pose: str) -> None:
        """From the next frame out (frames come out latency_frames after their audio): the pose's
        head tilt and nods over the model's idle (see poses.py)."""
        check_idle_pose(pose)
        if session.poses is not None:
            session.poses.set_pose(pose)

    # -- rendering ----------------------------------------------------------------------------------
    def _run_chunks(self, session: NeuralSession) -> None:
        need = self.variant.new_frames * C.SAMPLES_PER_FRAME
        while len(session.pending) >= need:
            piece, session.pending = session.pending[:need], session.pending[need:]
            frames = self.batcher.step(self._engine(), session.state, piece)
            session.queue.extend(_resize_frames(frames, C.SIZE))

    def render(self, session: NeuralSession, span: SpeechSpan) -> np.ndarray:
        """Thread-safe across sessions: the chunk steps of sessions announced to self.batcher
        (the engine's scheduler does) run as one batch."""
        audio = np.asarray(span.audio, np.float32).reshape(-1)
        if len(audio) != span.n_frames * C.SAMPLES_PER_FRAME:
            raise InputError(f"{len(audio)} samples for {span.n_frames} frames "
                             f"(need {C.SAMPLES_PER_FRAME} per frame)", field="audio")
        session.pending = np.concatenate([session.pending, audio])
        voiced = np.clip(np.nan_to_num(np.asarray(span.features.voiced, np.float64)), 0.0, 1.0)
        session.voiced.extend(voiced.tolist())
        self._run_chunks(session)
        return self._emit(session, span.n_frames)

    def _emit(self, session: NeuralSession, n: int) -> np.ndarray:
        """The next n frames out, moved by the session's idle pose."""
        out = [session.queue.popleft() for _ in range(n)]
        voiced = [session.voiced.popleft() for _ in range(n)]
        if session.poses is not None:
            out = session.poses.apply(out, voiced)
        session.frames_out += len(out)
        return np.stack(out) if out else np.zeros((0, C.SIZE, C.SIZE, 3), np.uint8)

    def flush(self, session: NeuralSession) -> np.ndarray:
        """The frames still held back by the latency: the audio tail padded with silence."""
        real = len(session.queue) + len(session.pending) // C.SAMPLES_PER_FRAME
        if len(session.pending):
            pad = self.variant.new_frames * C.SAMPLES_PER_FRAME - len(session.pending)
            session.pending = np.concatenate([session.pending, np.zeros(pad, np.float32)])
            self._run_chunks(session)
        out = self._emit(session, real)
        session.queue.clear()
        session.voiced.clear()
        return out

    def close(self) -> None:
        self.engine = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
