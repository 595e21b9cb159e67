#!/usr/bin/env python
"""`make gallery`: sample videos for several portraits and voices, plus a contact sheet PNG.

    .venv/bin/python bench/gallery.py [--out gallery]
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import sys
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


def png_data_uri(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def sample_frames(path: Path, n: int = 6) -> list[np.ndarray]:
    with av.open(str(path)) as f:
        frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
    idx = np.linspace(0, len(frames) - 1, n + 2)[1:-1].astype(int)
    return [frames[i] for i in idx]


def labelled_row(name: str, frames: list[np.ndarray], thumb: int = 192) -> np.ndarray:
    tiles = [cv2.resize(f, (thumb, thumb), interpolation=cv2.INTER_AREA) for f in frames]
    label = np.full((thumb, 150, 3), 255, np.uint8)
    for i, word in enumerate(name.split("/")):
        cv2.putText(label, word, (8, 80 + 28 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (20, 20, 20), 1,
                    cv2.LINE_AA)
    return np.hstack([label, *tiles])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="gallery")
    out = Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
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
