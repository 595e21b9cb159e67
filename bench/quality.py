"""Quality harness for talking-head videos (ours or anyone's). Prints JSON.

Metrics (our own definitions, not SyncNet scores):
  av_sync        lag (frames, + = video late) and Pearson correlation at the peak of the
                 cross-correlation (within +-10 frames) of the inner-lip opening measured by
                 mediapipe FaceMesh on the frames (landmarks 13-14 / interocular distance)
                 and the 25 fps RMS envelope of the audio.
  silence        share of silent frames (RMS < 10% of the clip's 95th percentile) whose mouth is
                 closed (opening < the clip's 10th percentile + 0.03 interocular).
  identity       landmark drift (after a similarity alignment on stable points, / interocular)
                 and SSIM of the face without the mouth/jaw region against the first frame
                 (aligned the same way): mean, min and the last minute's mean.
  jitter         RMS second difference of stable landmarks (per mille of the interocular
                 distance per frame) and the share of landmark-motion power above 5 Hz.

Usage:
  python bench/quality.py VIDEO.mp4 [--audio AUDIO]          # audio defaults to the MP4's track
  python bench/quality.py --render PORTRAIT.png AUDIO [--seconds S] [--seed N]
  python bench/quality.py --speed PORTRAIT.png AUDIO            # render ms/frame, 250 frames
  python bench/quality.py --tts-sweep [--voices A,B] [--sentences N] [--portrait P]
                         # espeak text path: SWEEP_SENTENCES x the 20 voices, a table + JSON
  python bench/quality.py --tts-timing [--voices A,B]
                         # the timeline against the sound espeak produced (no rendering)

TTS sweep columns: lag and correlation as av_sync; "silent closed" as silence.closed_share;
"speech open" the share of speech frames (not silent) whose opening exceeds the same closed
threshold, i.e. the mouth visibly moves while the voice sounds.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from flashhead import constants as C
from flashhead.render.cpu import landmarks as L

ROOT = Path(__file__).resolve().parents[1]

MAX_LAG = 10
SILENT_REL = 0.10          # silent: RMS below this fraction of the clip's 95th percentile
CLOSED_MARGIN = 0.03       # closed: opening below the clip's 10th percentile + this
LIPS_JAW = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39,
            40, 185, 152, 148, 176, 149, 150, 136, 172, 58, 132, 361, 288, 397, 365, 379, 378,
            400, 377, 206, 426, 2)


# ------------------------------------------------------------------ measurements
def rms_envelope(audio: np.ndarray, n_frames: int, sr: int = C.SAMPLE_RATE, fps: int = C.FPS) -> np.ndarray:
    hop = sr // fps
    a = np.zeros(n_frames * hop, np.float32)
    m = min(len(a), len(audio))
    a[:m] = np.asarray(audio, np.float32)[:m]
    return np.sqrt((a.reshape(n_frames, hop).astype(np.float64) ** 2).mean(1))


def lip_opening(lm: np.ndarray) -> np.ndarray:
    """(N, 478, 2) -> (N,) inner-lip gap / interocular distance (NaN where no face)."""
    gap = np.linalg.norm(lm[:, 13] - lm[:, 14], axis=1)
    eye_r, eye_l = lm[:, [33, 133]].mean(1), lm[:, [263, 362]].mean(1)
    return gap / np.linalg.norm(eye_l - eye_r, axis=1)


def _z(x):
    x = np.asarray(x, np.float64)
    return (x - np.nanmean(x)) / (np.nanstd(x) + 1e-9)


def av_sync(opening: np.ndarray, env: np.ndarray, max_lag: int = MAX_LAG) -> dict:
    """Peak of the normalised cross-correlation; lag > 0 means the video lags the audio."""
    o, e = _z(opening), _z(env)
    best = (-2.0, 0)
    for lag in range(-max_lag, max_lag + 1):
        a, b = (o[lag:], e[:len(e) - lag]) if lag >= 0 else (o[:lag], e[-lag:])
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.sum() < 10:
            continue
        r = float(np.corrcoef(a[ok], b[ok])[0, 1])
        if r > best[0]:
            best = (r, lag)
    return {"lag_frames": best[1], "correlation": round(best[0], 4)}


def silence_closure(opening: np.ndarray, env: np.ndarray) -> dict:
    silent = env < SILENT_REL * np.percentile(env, 95)
    ok = np.isfinite(opening)
    thr = np.nanpercentile(opening, 10) + CLOSED_MARGIN
    sel = silent & ok
    closed = opening[sel] < thr
    return {"silent_frames": int(sel.sum()),
            "closed_share": round(float(closed.mean()), 4) if sel.any() else None,
            "closed_threshold": round(float(thr), 4)}


def speech_open(opening: np.ndarray, env: np.ndarray) -> dict:
    """Share of speech frames (not silent by SILENT_REL) whose mouth is visibly open."""
    speech = (env >= SILENT_REL * np.percentile(env, 95)) & np.isfinite(opening)
    thr = np.nanpercentile(opening, 10) + CLOSED_MARGIN
    return {"speech_frames": int(speech.sum()),
            "open_share": round(float((opening[speech] >= thr).mean()), 4) if speech.any() else None}


def _align(lm: np.ndarray, ref: np.ndarray) -> np.ndarray | None:
    """2x3 similarity mapping lm's stable points onto ref's."""
    idx = list(L.STABLE)
    m, _ = cv2.estimateAffinePartial2D(lm[idx].astype(np.float32), ref[idx].astype(np.float32),
                                       method=cv2.LMEDS)
    return m


def _refine(gray: np.ndarray, ref: np.ndarray, mask: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Sub-pixel alignment of gray onto ref inside mask (ECC, affine), starting from m."""
    inv = cv2.invertAffineTransform(m).astype(np.float32)   # ECC wants ref -> frame
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 1e-5)
    try:
        _, inv = cv2.findTransformECC(ref, gray, inv, cv2.MOTION_AFFINE, crit,
                                      mask.astype(np.uint8), 3)
    except cv2.error:
        return m
    return cv2.invertAffineTransform(inv)


def _non_mouth_mask(ref: np.ndarray, shape) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(ref[list(L.FACE_OVAL)]).astype(np.int32)], 1)
    hull = cv2.convexHull(np.round(ref[list(LIPS_JAW)]).astype(np.int32))
    cv2.fillPoly(mask, [hull], 0)
    eye_d = np.linalg.norm(ref[[263, 362]].mean(0) - ref[[33, 133]].mean(0))
    k = max(3, int(0.08 * eye_d)) | 1
    return cv2.erode(mask, np.ones((k, k), np.uint8)).astype(bool)


def ssim_masked(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean SSIM (Gaussian window, sigma 1.5) of two grayscale images inside mask."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda x: cv2.GaussianBlur(x, (11, 11), 1.5)   # noqa: E731
    ma, mb = blur(a), blur(b)
    va, vb, cov = blur(a * a) - ma * ma, blur(b * b) - mb * mb, blur(a * b) - ma * mb
    s = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
    return float(s[mask].mean())


def _stats(x: np.ndarray, fps: int, lo_is_bad: bool) -> dict:
    x = x[np.isfinite(x)]
    if not len(x):
        return {"mean": None, "worst": None, "last_minute": None}
    last = x[-60 * fps:]
    return {"mean": round(float(x.mean()), 4),
            "worst": round(float(x.min() if lo_is_bad else x.max()), 4),
            "last_minute": round(float(last.mean()), 4)}


def jitter(lm: np.ndarray, fps: int) -> dict:
    idx = list(L.STABLE)
    eye_d = np.nanmedian(np.linalg.norm(lm[:, [263, 362]].mean(1) - lm[:, [33, 133]].mean(1), axis=1))
    tr = lm[:, idx].reshape(len(lm), -1) / eye_d
    tr = tr[np.isfinite(tr).all(1)]
    if len(tr) < 8:
        return {"second_diff_permille": None, "hf_share": None}
    d2 = np.diff(tr, 2, axis=0)
    vel = np.diff(tr, axis=0)
    spec = np.abs(np.fft.rfft(vel - vel.mean(0), axis=0)) ** 2
    freqs = np.fft.rfftfreq(len(vel), 1 / fps)
    hf = spec[freqs > 5.0].sum() / max(spec.sum(), 1e-12)
    return {"second_diff_permille": round(float(np.sqrt((d2 ** 2).mean()) * 1000), 4),
            "hf_share": round(float(hf), 4)}


# ------------------------------------------------------------------ driver
@dataclass
class _Tracker:
    mesh: object = None
    lms: list = field(default_factory=list)
    ssim: list = field(default_factory=list)
    drift: list = field(default_factory=list)
    ref: np.ndarray | None = None
    ref_gray: np.ndarray | None = None
    mask: np.ndarray | None = None
    identity: bool = True      # False: landmarks only (the identity metrics cost most of the time)

    def add(self, frame: np.ndarray) -> None:
        if self.mesh is None:
            import mediapipe as mp
            self.mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=False, refine_landmarks=True,
                                                        max_num_faces=1)
        res = self.mesh.process(np.ascontiguousarray(frame))
        if not res.multi_face_landmarks:
            self.lms.append(np.full((L.N_LANDMARKS, 2), np.nan, np.float32))
            self.ssim.append(np.nan)
            self.drift.append(np.nan)
            return
        h, w = frame.shape[:2]
        lm = np.array([(p.x * w, p.y * h) for p in res.multi_face_landmarks[0].landmark],
                      np.float32)[:L.N_LANDMARKS]
        self.lms.append(lm)
        if not self.identity:
            return
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if self.ref is None:
            self.ref, self.ref_gray = lm, gray
            self.mask = _non_mouth_mask(lm, gray.shape)
        m = _align(lm, self.ref)
        if m is None:
            self.ssim.append(np.nan)
            self.drift.append(np.nan)
            return
        m = _refine(gray, self.ref_gray, self.mask, m)
        warped = cv2.warpAffine(gray, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        self.ssim.append(ssim_masked(warped, self.ref_gray, self.mask))
        keep = [i for i in range(L.N_LANDMARKS) if i not in set(LIPS_JAW)]
        moved = lm[keep] @ m[:, :2].T + m[:, 2]
        eye_d = np.linalg.norm(self.ref[[263, 362]].mean(0) - self.ref[[33, 133]].mean(0))
        self.drift.append(float(np.linalg.norm(moved - self.ref[keep], axis=1).mean() / eye_d))


def evaluate(frames: Iterable[np.ndarray], audio: np.ndarray, fps: int = C.FPS,
             sample_rate: int = C.SAMPLE_RATE, identity: bool = True) -> dict:
    """frames: iterable of (H, W, 3) uint8 RGB; audio: float32 mono at sample_rate.

    identity=False skips the identity metrics (reported as None), for quick lip-sync sweeps."""
    tr = _Tracker(identity=identity)
    for fr in frames:
        tr.add(fr)
    n = len(tr.lms)
    if n == 0:
        raise ValueError("no frames")
    lm = np.stack(tr.lms)
    opening = lip_opening(lm)
    env = rms_envelope(audio, n, sample_rate, fps)
    return {
        "frames": n, "seconds": round(n / fps, 3),
        "face_found_share": round(float(np.isfinite(opening).mean()), 4),
        "av_sync": av_sync(opening, env),
        "silence": silence_closure(opening, env),
        "speech": speech_open(opening, env),
        "identity": {"ssim_non_mouth": _stats(np.array(tr.ssim), fps, True),
                     "landmark_drift": _stats(np.array(tr.drift), fps, False)} if identity else None,
        "jitter": jitter(lm, fps),
    }


def read_video(path: str) -> tuple[Iterable[np.ndarray], np.ndarray | None, int]:
    """(frame iterator, audio track at 16 kHz mono or None, fps) with PyAV."""
    import av
    with av.open(path) as c:
        fps = int(round(float(c.streams.video[0].average_rate or C.FPS)))
        audio = None
        if c.streams.audio:
            rs = av.AudioResampler(format="flt", layout="mono", rate=C.SAMPLE_RATE)
            chunks = []
            for fr in c.decode(audio=0):
                chunks += [f.to_ndarray().reshape(-1) for f in rs.resample(fr)]
            chunks += [f.to_ndarray().reshape(-1) for f in rs.resample(None)]
            audio = np.concatenate(chunks).astype(np.float32) if chunks else None

    def frames():
        with av.open(path) as c2:
            for fr in c2.decode(video=0):
                yield fr.to_ndarray(format="rgb24")
    return frames(), audio, fps


def read_audio(path: str) -> np.ndarray:
    import av
    rs = av.AudioResampler(format="flt", layout="mono", rate=C.SAMPLE_RATE)
    out = []
    with av.open(path) as c:
        for fr in c.decode(audio=0):
            out += [f.to_ndarray().reshape(-1) for f in rs.resample(fr)]
    out += [f.to_ndarray().reshape(-1) for f in rs.resample(None)]
    return np.concatenate(out).astype(np.float32)


def evaluate_file(video: str, audio_path: str | None = None) -> dict:
    frames, track, fps = read_video(video)
    audio = read_audio(audio_path) if audio_path else track
    if audio is None:
        raise ValueError(f"{video} has no audio track; pass --audio")
    return evaluate(frames, audio, fps)


def load_rgb(path: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def render_frames(portrait, audio: np.ndarray, seed: int = 0, chunk: int = 250, features=None):
    """Render with the CPU renderer chunk by chunk, yielding frames.

    portrait: a path, or a portrait already prepared by a CpuRenderer; features default to the
    sound alone (the upload path)."""
    from flashhead.render.base import SpeechSpan
    from flashhead.render.cpu import CpuRenderer
    from flashhead.visemes.audio import features_from_audio

    feats = features_from_audio(audio) if features is None else features
    r = CpuRenderer()
    r.setup()
    p = r.prepare(load_rgb(portrait), seed) if isinstance(portrait, str) else portrait
    s = r.new_session(p, seed)
    spf = C.SAMPLES_PER_FRAME
    for a in range(0, len(feats), chunk):
        b = min(len(feats), a + chunk)
        seg = np.zeros((b - a) * spf, np.float32)
        piece = audio[a * spf:b * spf]
        seg[:len(piece)] = piece
        yield from r.render(s, SpeechSpan(a, feats.slice(a, b), seg))


# ------------------------------------------------------------------ TTS sweep
SWEEP_SENTENCES = (
    "Hello there, how are you today? My name is Anna, and I will be reading the news.",
    "The quick brown fox jumps over the lazy dog. Maybe my baby bought a blue map.",
    "Welcome back! Today we look at three simple ways to save energy at home.",
    "Would you like some fresh orange juice, or should I put the kettle on?",
    "Seven thousand people visited the old museum on the first sunny weekend of spring.",
)
SWEEP_TARGETS = {"max_abs_lag": 1, "min_correlation": 0.75, "min_silent_closed": 0.95,
                 "min_speech_open": 0.60}


def tts_case(portrait, voice: str, text: str, seed: int = 1, identity: bool = False) -> dict:
    """espeak speech for `text` -> features_for (the text path) -> CPU render -> the harness."""
    from flashhead.pipeline import pad_to_frames
    from flashhead.speech.espeak import EspeakEngine
    from flashhead.visemes.features import features_for

    speech = EspeakEngine().synthesize(text, voice, C.DEFAULT_STABILITY, seed)
    speech.audio = pad_to_frames(speech.audio)
    feats = features_for(speech)
    return evaluate(render_frames(portrait, speech.audio, seed, features=feats), speech.audio,
                    identity=identity)


def sweep_row(voice: str, reports: list[dict]) -> dict:
    """One voice over its sentences: worst |lag|, mean and min correlation, mean shares."""
    lags = [r["av_sync"]["lag_frames"] for r in reports]
    corr = [r["av_sync"]["correlation"] for r in reports]
    closed = [r["silence"]["closed_share"] for r in reports if r["silence"]["closed_share"] is not None]
    opened = [r["speech"]["open_share"] for r in reports if r["speech"]["open_share"] is not None]
    row = {"voice": voice, "lag": max(lags, key=abs), "corr": round(float(np.mean(corr)), 3),
           "corr_min": round(float(min(corr)), 3),
           "silent_closed": round(float(np.mean(closed)), 3) if closed else None,
           "speech_open": round(float(np.mean(opened)), 3) if opened else None}
    t = SWEEP_TARGETS
    row["ok"] = bool(abs(row["lag"]) <= t["max_abs_lag"] and row["corr"] >= t["min_correlation"]
                     and (row["silent_closed"] or 0) >= t["min_silent_closed"]
                     and (row["speech_open"] or 0) >= t["min_speech_open"])
    return row


VOWEL_START = "aeiouAEIOUV03@"


def tts_timing(voice: str, sentences, seed: int = 1) -> dict:
    """Phoneme timeline vs the synthesised sound, per voice (medians in ms, 5 ms RMS windows):
    onset/offset: first loud window after a pause vs the pause's end, last loud window before
    a pause vs its start; stop_closure: where the silence before an unvoiced stop begins vs
    the stop's start (0 = the timeline closes with the sound); stressed/unstressed: mean peak
    opening (features_for) and loudness (RMS / 95th percentile) of the vowels."""
    from flashhead.speech.espeak import EspeakEngine
    from flashhead.visemes.features import features_for

    hop = C.SAMPLE_RATE // 200
    on, off, stop, vowels = [], [], [], {"stressed": [], "unstressed": []}
    for text in sentences:
        sp = EspeakEngine().synthesize(text, voice, C.DEFAULT_STABILITY, seed)
        env = np.sqrt((sp.audio[:len(sp.audio) // hop * hop].reshape(-1, hop) ** 2).mean(1))
        loud = env > 0.05 * np.percentile(env, 95)
        feats = features_for(sp)
        frame_env = rms_envelope(sp.audio, len(feats))
        frame_env = np.clip(frame_env / np.percentile(frame_env, 95), 0, 1)
        ph = sp.phonemes
        for i, p in enumerate(ph):
            sym, a, b = p.symbol.strip("',%="), int(round(p.start * 200)), int(round(p.end * 200))
            if sym.startswith("_") and p.end - p.start >= 0.06:
                if i + 1 < len(ph) and loud[a:].any():
                    on.append((a + int(np.argmax(loud[a:])) - b) * 5)
                last = np.flatnonzero(loud[:a + 40])
                if i > 0 and len(last):
                    off.append((last[-1] + 1 - a) * 5)
            if sym in ("p", "t", "k") and i > 0 and ph[i - 1].symbol.strip("',%=")[:1] in VOWEL_START:
                quiet = np.flatnonzero(~loud[int(round(ph[i - 1].start * 200)):b])
                if len(quiet):
                    stop.append((int(round(ph[i - 1].start * 200)) + quiet[0] - a) * 5)
            if sym[:1] and sym[0] in VOWEL_START:
                fa, fb = int(p.start * C.FPS), max(int(p.end * C.FPS), int(p.start * C.FPS) + 1)
                key = "stressed" if p.symbol.startswith("'") else "unstressed"
                vowels[key].append((feats.open[fa:fb].max(), frame_env[fa:fb].max()))
    med = lambda x: float(np.median(x)) if x else None   # noqa: E731
    out = {"voice": voice, "onset_ms": med(on), "offset_ms": med(off), "stop_closure_ms": med(stop)}
    for k, v in vowels.items():
        v = np.array(v).reshape(-1, 2)
        out[f"{k}_open"], out[f"{k}_loudness"] = (round(float(x), 3) for x in v.mean(0))
    return out


def tts_sweep(portrait_path: str, voices, sentences, seed: int = 1, log=print) -> list[dict]:
    from flashhead.render.cpu import CpuRenderer

    portrait = CpuRenderer().prepare(load_rgb(portrait_path), seed)
    log(f"{'voice':<10} {'lag':>4} {'corr':>6} {'min':>6} {'silent closed':>14} {'speech open':>12}  ok")
    rows = []
    for v in voices:
        row = sweep_row(v, [tts_case(portrait, v, t, seed) for t in sentences])
        rows.append(row)
        log(f"{v:<10} {row['lag']:>4} {row['corr']:>6.3f} {row['corr_min']:>6.3f} "
            f"{row['silent_closed']:>14.3f} {row['speech_open']:>12.3f}  {'yes' if row['ok'] else 'NO'}")
    return rows


def render_speed(portrait: str, audio: np.ndarray, frames: int = 250, threads: int = 1) -> dict:
    """Render ms/frame of the CPU renderer for `frames` frames of speech (features precomputed)."""
    import time

    from flashhead.render.base import SpeechSpan
    from flashhead.render.cpu import CpuRenderer
    from flashhead.visemes.audio import features_from_audio

    img = load_rgb(portrait)
    audio = np.resize(audio, frames * C.SAMPLES_PER_FRAME).astype(np.float32)
    feats = features_from_audio(audio)
    r = CpuRenderer(threads=threads)
    r.setup()
    t0 = time.perf_counter()
    p = r.prepare(img, 0)
    prep = time.perf_counter() - t0
    s = r.new_session(p, 0)
    t0 = time.perf_counter()
    for a in range(0, frames, C.CHUNK_FRAMES):
        b = min(frames, a + C.CHUNK_FRAMES)
        r.render(s, SpeechSpan(a, feats.slice(a, b), audio[a * C.SAMPLES_PER_FRAME:b * C.SAMPLES_PER_FRAME]))
    dt = time.perf_counter() - t0
    return {"threads": threads, "frames": frames, "prepare_s": round(prep, 3),
            "render_ms_per_frame": round(dt / frames * 1000, 3), "render_fps": round(frames / dt, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("video", nargs="?")
    ap.add_argument("--audio")
    ap.add_argument("--render", nargs=2, metavar=("PORTRAIT", "AUDIO"))
    ap.add_argument("--seconds", type=float, default=0.0, help="with --render: loop/cut audio to this length")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speed", nargs=2, metavar=("PORTRAIT", "AUDIO"),
                    help="print CPU render ms/frame for 250 frames (1 and 2 OpenCV threads)")
    ap.add_argument("--tts-sweep", action="store_true",
                    help="espeak text path: SWEEP_SENTENCES for every voice; a table, then JSON")
    ap.add_argument("--tts-timing", action="store_true",
                    help="espeak text path: the phoneme timeline against the synthesised sound")
    ap.add_argument("--voices", help="with --tts-sweep/--tts-timing: comma-separated voices (default all 20)")
    ap.add_argument("--sentences", type=int, default=len(SWEEP_SENTENCES),
                    help="with --tts-sweep: use the first N sentences")
    ap.add_argument("--portrait", default=str(ROOT / "examples" / "portrait_girl_512.png"))
    args = ap.parse_args(argv)
    if args.tts_timing:
        voices = args.voices.split(",") if args.voices else list(C.VOICES)
        report = {"tts_timing": [tts_timing(v, SWEEP_SENTENCES[:args.sentences], args.seed or 1)
                                 for v in voices]}
    elif args.tts_sweep:
        voices = args.voices.split(",") if args.voices else list(C.VOICES)
        rows = tts_sweep(args.portrait, voices, SWEEP_SENTENCES[:args.sentences], args.seed or 1,
                         log=lambda line: print(line, file=sys.stderr, flush=True))
        report = {"tts_sweep": rows, "targets": SWEEP_TARGETS, "all_ok": all(r["ok"] for r in rows)}
    elif args.speed:
        audio = read_audio(args.speed[1])
        report = {"speed": [render_speed(args.speed[0], audio, threads=t) for t in (1, 2, 1)]}
    elif args.render:
        audio = read_audio(args.render[1])
        if args.seconds:
            n = int(args.seconds * C.SAMPLE_RATE)
            audio = np.resize(audio, n).astype(np.float32)
        report = evaluate(render_frames(args.render[0], audio, args.seed), audio)
    elif args.video:
        report = evaluate_file(args.video, args.audio)
    else:
        ap.error("give a VIDEO or --render PORTRAIT AUDIO")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
