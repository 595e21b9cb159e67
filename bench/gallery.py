#!/usr/bin/env python
"""`make gallery`: sample videos for several portraits and voices, a contact sheet PNG, and
before/after crops (2x) of the mouth and eye artefacts of issue 12 (artefacts.png).

    .venv/bin/python bench/gallery.py [--out gallery] [--before REF] [--artefacts-only]

The "before" column renders the same poses with the renderer of git REF (default BEFORE_REF,
the code before the artefact fixes): its src/ is exported to a temporary folder and this script
runs again there with --artefacts-only, so both columns come from the same poses and portraits.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import portrait_kinds  # noqa: E402

from flashhead import constants as C  # noqa: E402
from flashhead.pipeline import Engines, generate, request_from_input  # noqa: E402

ROWS = [  # (portrait kind, voice, sentence)
    ("girl", "Aria", "Hello! I am a talking portrait. My mouth follows every word I say."),
    ("astronaut", "Sarah", "Mission control, we have a beautiful view of the Earth today."),
    ("painted", "Lily", "Paintings can talk too, if you ask them politely."),
    ("glasses", "Jessica", "With or without glasses, the eyes still blink."),
    ("grayscale", "Charlotte", "Old photographs come to life in black and white."),
    ("off_centre", "Alice", "I was standing at the side of the picture, but here I am."),
    ("beard", "George", "Moustaches and beards move with the jaw."),
]


BEFORE_REF = "a50af7d"   # main before issue 12's artefact fixes
ROOT = Path(__file__).resolve().parents[1]


def parted(out: Path) -> np.ndarray:
    """The sample portrait with its lips slightly parted: rendered once (by whichever renderer
    runs first) and kept in `out`, so before and after start from the same input."""
    path = out / "parted_input.png"
    if not path.exists():
        from flashhead.render.cpu import CpuRenderer
        r = CpuRenderer()
        img = still_pose(r, r.prepare(portrait_kinds.girl(), 0), open_=0.22, teeth=0.3)
        Image.fromarray(img).save(path)
    return np.asarray(Image.open(path).convert("RGB"))

# (label, portrait kind, region, pose): the artefacts of issue 12, before and after
ARTEFACTS = [
    ("fangs: wide open", "girl", "mouth", dict(open_=1.0, spread=0.15, teeth=0.2)),
    ("fangs: wide, spread", "astronaut", "mouth", dict(open_=0.9, spread=0.6, teeth=0.3)),
    ("parted portrait, at rest", "parted", "mouth", dict(seal=1.0)),
    ("parted portrait, half open", "parted", "mouth", dict(open_=0.4)),
    ("toothy smile, m-b-p closed", "astronaut", "mouth", dict(closure=1.0)),
    ("grayscale, open", "grayscale", "mouth", dict(open_=0.8, spread=0.1, teeth=0.2)),
    ("painted, lids closed", "painted", "eyes", dict(blink=1.0)),
    ("cartoon, lids closed", "cartoon", "eyes", dict(blink=1.0)),
    ("photo, lids closed", "girl", "eyes", dict(blink=1.0)),
    ("photo, lids half", "girl", "eyes", dict(blink=0.5)),
    ("painted, lids 60%", "painted", "eyes", dict(blink=0.6)),
    ("cartoon, lids 60%", "cartoon", "eyes", dict(blink=0.6)),
]


def still_pose(renderer, portrait, open_=0.0, spread=0.0, round_=0.0, closure=0.0, teeth=0.0,
               blink=0.0, seal=0.0) -> np.ndarray:
    """One still frame with the given mouth features, lid closure and resting-lip seal (as in
    silence), without head motion."""
    from flashhead.render.cpu.motion import MotionState
    from flashhead.render.cpu.renderer import Session

    s = Session(portrait, MotionState(0), portrait.image.copy())
    renderer._local(s, "mouth", portrait.mouth,
                    portrait.mouth.coefficients(open_, spread, round_, closure, teeth, seal),
                    portrait.mouth.is_active)
    for k, eye in enumerate(portrait.eyes):
        renderer._local(s, f"eye{k}", eye, eye.coefficients(blink, 0.0, 0.0), lambda c: True)
    return s.work.copy()


def crop_2x(frame: np.ndarray, lm: np.ndarray, region: str) -> np.ndarray:
    from flashhead.render.cpu import landmarks as L
    if region == "mouth":
        pts = lm[list(L.OUTER_UPPER) + list(L.OUTER_LOWER)]
        pad = (14, 22)
    else:
        pts = lm[[33, 133, 263, 362, 159, 145, 386, 374, 105, 334]]
        pad = (12, 14)
    (x0, y0), (x1, y1) = pts.min(0).astype(int) - pad, pts.max(0).astype(int) + pad
    crop = frame[max(y0, 0):y1, max(x0, 0):x1]
    crop = cv2.resize(crop, (2 * crop.shape[1], 2 * crop.shape[0]), interpolation=cv2.INTER_NEAREST)
    return crop


def artefact_crops(out: Path, label: str) -> None:
    """Render every ARTEFACTS pose with the flashhead on sys.path; save out/<label>_<i>.png."""
    from flashhead.media.image import crop_face
    from flashhead.render.cpu import CpuRenderer

    r = CpuRenderer()
    r.setup()
    prepared = {}
    for i, (_, kind, region, pose) in enumerate(ARTEFACTS):
        if kind not in prepared:
            src = parted(out) if kind == "parted" else portrait_kinds.KINDS[kind]()
            crop, _ = crop_face(src)
            prepared[kind] = r.prepare(crop, 0)
        p = prepared[kind]
        img = crop_2x(still_pose(r, p, **pose), p.landmarks, region)
        cv2.imwrite(str(out / f"{label}_{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def before_crops(out: Path, ref: str) -> None:
    """artefact_crops with the src/ of git `ref`, in a subprocess."""
    with tempfile.TemporaryDirectory(prefix="flashhead-before-") as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], check=True,
                                 capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        env = dict(os.environ, PYTHONPATH=str(Path(tmp) / "src"))
        subprocess.run([sys.executable, __file__, "--artefacts-only", "--label", "before",
                        "--out", str(out)], check=True, env=env)


def artefact_sheet(out: Path) -> Path:
    """Rows: artefacts; columns: before | after (2x crops), labelled."""
    rows = []
    for i, (label, kind, _, _) in enumerate(ARTEFACTS):
        after = cv2.cvtColor(cv2.imread(str(out / f"after_{i}.png")), cv2.COLOR_BGR2RGB)
        before = out / f"before_{i}.png"
        tiles = [cv2.cvtColor(cv2.imread(str(before)), cv2.COLOR_BGR2RGB) if before.exists()
                 else np.full_like(after, 255), after]
        h = max(t.shape[0] for t in tiles)
        tiles = [np.pad(t, ((0, h - t.shape[0]), (0, 8), (0, 0)), constant_values=255) for t in tiles]
        rows.append(labelled_row(label.replace(": ", "/").replace(", ", "/"), tiles, thumb=None))
    w = max(r.shape[1] for r in rows)
    sheet = np.vstack([np.pad(r, ((0, 8), (0, w - r.shape[1]), (0, 0)), constant_values=255) for r in rows])
    path = out / "artefacts.png"
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return path


def png_data_uri(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def sample_frames(path: Path, n: int = 6) -> list[np.ndarray]:
    with av.open(str(path)) as f:
        frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
    idx = np.linspace(0, len(frames) - 1, n + 2)[1:-1].astype(int)
    return [frames[i] for i in idx]


def labelled_row(name: str, frames: list[np.ndarray], thumb: int | None = 192) -> np.ndarray:
    """A label column and the frames side by side (resized to thumb x thumb unless None)."""
    tiles = frames if thumb is None else [cv2.resize(f, (thumb, thumb), interpolation=cv2.INTER_AREA)
                                          for f in frames]
    label = np.full((tiles[0].shape[0], 150, 3), 255, np.uint8)
    for i, word in enumerate(name.split("/")):
        cv2.putText(label, word, (8, 30 + 28 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (20, 20, 20), 1,
                    cv2.LINE_AA)
    return np.hstack([label, *tiles])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="gallery")
    ap.add_argument("--before", default=BEFORE_REF, help="git ref of the 'before' artefact crops")
    ap.add_argument("--artefacts-only", action="store_true", help="only the artefact crops")
    ap.add_argument("--label", default="after", help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    artefact_crops(out, args.label)
    if args.artefacts_only:
        return 0
    try:
        before_crops(out, args.before)
    except (OSError, subprocess.CalledProcessError) as e:   # no git, or the ref is not here
        print(json.dumps({"before": f"not rendered: {e}"}))
    print(json.dumps({"artefacts": str(artefact_sheet(out))}))
    engines = Engines.create()
    rows = []
    for kind, voice, text in ROWS:
        req = request_from_input({"image_url": png_data_uri(portrait_kinds.KINDS[kind]()),
                                  "text": text, "voice": voice, "seed": 1}, C.TEXT_ENDPOINT)
        result = generate(req, engines, out / f"{kind}_{voice}.mp4")
        print(json.dumps({"video": str(result.path), "duration": round(result.duration, 2)}))
        rows.append(labelled_row(f"{kind}/{voice}", sample_frames(result.path)))
    sheet = np.vstack(rows)
    cv2.imwrite(str(out / "contact_sheet.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(json.dumps({"contact_sheet": str(out / "contact_sheet.png")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
