"""load_image / detect_face / crop_face on the sample portrait in many encodings and layouts."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from flashhead import constants as C
from flashhead.errors import InputError, LimitExceeded, NoFaceError
from flashhead.media.image import crop_face, crop_square, cut_padded, detect_face, load_image, paste_back


@pytest.fixture(scope="module")
def portrait(portrait_path) -> Image.Image:
    return Image.open(portrait_path).convert("RGB")


@pytest.fixture(scope="module")
def reference(portrait):
    """Face box and crop of the plain portrait, to compare the other cases with."""
    rgb = np.asarray(portrait)
    return detect_face(rgb), crop_face(rgb)


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("fmt, tolerance", [("PNG", 0.0), ("JPEG", 4.0), ("WEBP", 4.0), ("BMP", 0.0),
                                            ("TIFF", 0.0), ("GIF", 12.0)])
def test_formats(portrait, fmt, tolerance):
    rgb = load_image(encode(portrait, fmt, quality=95))
    assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8
    assert diff(rgb, np.asarray(portrait)) <= tolerance


def test_rgba_composited_on_white(portrait):
    rgba = portrait.convert("RGBA")
    alpha = np.full((512, 512), 255, np.uint8)
    alpha[:, :100] = 0
    rgba.putalpha(Image.fromarray(alpha))
    rgb = load_image(encode(rgba, "PNG"))
    assert (rgb[:, :100] == 255).all()
    assert (rgb[:, 100:] == np.asarray(portrait)[:, 100:]).all()


def test_every_colour_and_alpha_is_composited_on_white_as_pillow_rounds_it():
    """The composite runs in bands of rows (a 49 MP RGBA PNG peaked at 1.28 GB with Pillow's
    full-size temporaries, 0.63 GB now); Pillow's alpha_composite is the reference."""
    c, a = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    rgba = np.stack([c, 255 - c, c // 2, a], -1)                         # each (colour, alpha) pair
    white = Image.new("RGBA", (256, 256), (255, 255, 255, 255))
    expected = np.asarray(Image.alpha_composite(white, Image.fromarray(rgba)).convert("RGB"))
    assert np.array_equal(load_image(encode(Image.fromarray(rgba), "PNG")), expected)


@pytest.mark.parametrize("mode", ["L", "P", "LA", "I;16", "CMYK"])
def test_other_modes_become_rgb(portrait, mode):
    image = portrait.convert("L").convert("I;16") if mode == "I;16" else portrait.convert(mode)
    if mode == "I;16":  # spread 8-bit values over 16 bits like a real 16-bit scan
        image = Image.fromarray((np.asarray(portrait.convert("L")).astype(np.uint16) * 257))
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    rgb = load_image(encode(image, fmt))
    assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8
    if mode in ("L", "I;16", "LA"):
        assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
        assert diff(rgb[..., 0], np.asarray(portrait.convert("L"))) <= 1.0
    else:
        assert diff(rgb, np.asarray(portrait)) < 20  # palette quantisation


def test_exif_orientation_applied(portrait, reference):
    stored = portrait.transpose(Image.Transpose.ROTATE_90)  # as a camera held sideways stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    rgb = load_image(encode(stored, "JPEG", quality=95, exif=exif))
    assert rgb.shape == (512, 512, 3)
    assert diff(rgb, np.asarray(portrait)) < 4
    _, info = crop_face(rgb)
    (_, ref_info) = reference[1]
    assert abs(info.left - ref_info.left) < 15 and abs(info.top - ref_info.top) < 15


def test_portrait_crop(portrait, reference):
    face, (crop, info) = reference
    cx, cy, w, h = face
    assert 150 < cx < 350 and 150 < cy < 350 and 150 < w < 350
    assert crop.shape == (C.SIZE, C.SIZE, 3) and crop.dtype == np.uint8
    assert info.side == round(C.CROP_SCALE * w)
    assert info.top == round(cy - C.CROP_ABOVE * info.side)
    assert abs(info.left + info.side / 2 - cx) <= 1


def test_off_centre_face_in_large_canvas(portrait, reference):
    """A 2400x1800 photo (downscaled for detection) with the face near the right edge."""
    canvas = Image.new("RGB", (2400, 1800), (90, 120, 150))
    canvas.paste(portrait, (1850, 300))
    rgb = load_image(encode(canvas, "PNG"))
    crop, info = crop_face(rgb)
    (ref_crop, ref_info) = reference[1]
    assert abs(info.left - (ref_info.left + 1850)) < 0.05 * ref_info.side
    assert abs(info.top - (ref_info.top + 300)) < 0.05 * ref_info.side
    assert abs(info.side - ref_info.side) < 0.05 * ref_info.side
    assert (info.image_width, info.image_height) == (2400, 1800)
    assert diff(crop[100:400, 100:400], ref_crop[100:400, 100:400]) < 25


def test_crop_pads_by_replication_not_black():
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:] = (200, 100, 50)
    rgb[0] = (10, 20, 30)  # the top row: what padding above must repeat
    square = cut_padded(rgb, left=-10, top=-15, side=50)
    assert square.shape == (50, 50, 3)
    assert (square[:16] == (10, 20, 30)).all()
    assert (square[16:] == (200, 100, 50)).all()
    assert (cut_padded(rgb, 5, 5, 20) == rgb[5:25, 5:25]).all()


def test_face_at_image_edge_is_padded(portrait):
    """Only the top-left quarter of a face near the corner: the square leaves the image."""
    rgb = np.asarray(portrait)[180:, 150:]
    face = detect_face(np.ascontiguousarray(rgb))
    assert face is not None
    crop, info = crop_face(np.ascontiguousarray(rgb))
    assert info.left < 0 and info.top < 0
    assert crop.reshape(-1, 3).max(axis=1).min() > 0  # no pure-black padding


def test_paste_back_round_trip(portrait, reference):
    rgb = np.asarray(portrait)
    crop, info = reference[1]
    restored = paste_back(rgb, crop, info)
    assert restored.shape == rgb.shape
    assert diff(restored, rgb) < 3


def test_crop_square_rule():
    assert crop_square((100.0, 200.0, 50.0, 60.0)) == (50, 145, 100)


def test_not_an_image():
    with pytest.raises(InputError, match="is text, not a JPEG, PNG, WebP, GIF, BMP or TIFF image") as exc:
        load_image(b"hello, this is a text file\n" * 10)
    assert exc.value.field == "image_url"


def test_animated_gif_gives_its_first_frame(portrait):
    second = Image.new("RGB", portrait.size, (0, 0, 0))
    data = encode(portrait, "GIF", save_all=True, append_images=[second])
    assert diff(load_image(data), np.asarray(portrait)) <= 12.0


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA", "PCX"])
def test_formats_pillow_knows_but_we_do_not_accept(portrait, fmt):
    with pytest.raises(InputError, match="not a JPEG, PNG") as exc:
        load_image(encode(portrait.resize((64, 64)), fmt), field="img")
    assert exc.value.field == "img"


def test_truncated_image(portrait):
    data = encode(portrait, "PNG")
    with pytest.raises(InputError) as exc:
        load_image(data[: len(data) // 2])
    assert exc.value.field == "image_url"


def test_blank_image_has_no_face():
    rgb = load_image(encode(Image.new("RGB", (640, 480), (128, 128, 128)), "PNG"))
    assert detect_face(rgb) is None
    with pytest.raises(NoFaceError, match="no face found in the image") as exc:
        crop_face(rgb)
    assert exc.value.field == "image_url"


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but holds (almost) no data."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(
            ">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height", [(9000, 6000), (100_000, 100_000)])
def test_decompression_bomb_refused_from_header(width, height):
    with pytest.raises(LimitExceeded, match="pixels") as exc:
        load_image(png_header_only(width, height))
    assert exc.value.field == "image_url"


def test_pixel_limit_is_configurable(portrait):
    data = encode(Image.new("P", (4000, 4000)), "PNG")  # 16 MP, a few kB on disk
    assert len(data) < 100_000
    with pytest.raises(LimitExceeded):
        load_image(data, max_pixels=10_000_000)
    assert load_image(encode(portrait, "PNG"), max_pixels=512 * 512).shape == (512, 512, 3)
