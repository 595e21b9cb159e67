"""What a file is, from its first bytes, and the allow-lists built on that.

Uploads are typed here and nowhere else: never by the uploader's declared type or file name.
Only the containers users send are recognised; everything else (HTML, SVG, scripts, playlists,
ffconcat, SDP, archives...) is `None`, which means "not media": refused as an input, stored and
served as application/octet-stream.
"""
from __future__ import annotations

from dataclasses import dataclass

HEAD_BYTES = 64                  # sniff() looks at no more than this


@dataclass(frozen=True)
class Kind:
    name: str                    # short name used in messages
    mime: str                    # stored and served Content-Type
    ext: str                     # extension of the storage key
    demuxer: str | None = None   # FFmpeg demuxer forced when decoding (audio, video)
    pillow: str | None = None    # Pillow format forced when decoding (images)


WAV = Kind("WAV", "audio/wav", ".wav", demuxer="wav")
MP3 = Kind("MP3", "audio/mpeg", ".mp3", demuxer="mp3")
AAC = Kind("AAC", "audio/aac", ".aac", demuxer="aac")
M4A = Kind("M4A", "audio/mp4", ".m4a", demuxer="mov")
MP4 = Kind("MP4", "video/mp4", ".mp4", demuxer="mov")
OGG = Kind("Ogg", "audio/ogg", ".ogg", demuxer="ogg")
FLAC = Kind("FLAC", "audio/flac", ".flac", demuxer="flac")
WEBM = Kind("WebM", "video/webm", ".webm", demuxer="matroska")
JPEG = Kind("JPEG", "image/jpeg", ".jpg", pillow="JPEG")
PNG = Kind("PNG", "image/png", ".png", pillow="PNG")
WEBP = Kind("WebP", "image/webp", ".webp", pillow="WEBP")
GIF = Kind("GIF", "image/gif", ".gif", pillow="GIF")
BMP = Kind("BMP", "image/bmp", ".bmp", pillow="BMP")
TIFF = Kind("TIFF", "image/tiff", ".tif", pillow="TIFF")

AUDIO = (WAV, MP3, AAC, M4A, MP4, OGG, FLAC, WEBM)   # an MP4 with a sound track is audio too
IMAGE = (JPEG, PNG, WEBP, GIF, BMP, TIFF)
AUDIO_NAMES = "WAV, MP3, AAC/M4A, Ogg/Opus, FLAC or WebM"
IMAGE_NAMES = "JPEG, PNG, WebP, GIF, BMP or TIFF"
# Served inline by /files; every other type is an attachment (application/octet-stream).
INLINE_TYPES = frozenset(k.mime for k in (*AUDIO, *IMAGE)) | {"audio/webm"}
OCTET = "application/octet-stream"

_ISO_IMAGE_BRANDS = {b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis"}  # HEIF/AVIF: not ours
_AUDIO_BRANDS = {b"M4A ", b"M4B "}
_FRAGMENT_BOXES = {b"moof", b"styp", b"sidx"}
_BMP_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}


def sniff(data: bytes) -> Kind | None:
    """The allowed container `data` starts with, or None."""
    head = bytes(data[:HEAD_BYTES])
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return WAV
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return WEBP
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return GIF
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return TIFF
    if head.startswith(b"BM") and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return BMP
    if head.startswith(b"OggS"):
        return OGG
    if head.startswith(b"fLaC"):
        return FLAC
    if head[4:8] == b"ftyp" and head[8:12] not in _ISO_IMAGE_BRANDS:
        return M4A if head[8:12] in _AUDIO_BRANDS else MP4
    if head[4:8] in _FRAGMENT_BOXES:               # a media segment of a fragmented MP4 (streaming)
        return MP4
    if head.startswith(b"\x1a\x45\xdf\xa3") and b"\x42\x82" in head and b"webm" in head:
        return WEBM
    if head.startswith(b"ID3") and len(head) >= 10:
        return _behind_id3(data)
    return _mpeg_audio(head)


def _behind_id3(data: bytes) -> Kind:
    """An ID3v2 tag (FFmpeg skips it for any demuxer) in front of MP3, or of FLAC or AAC."""
    size = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(data[6:10]))
    after = bytes(data[size:size + 4])            # one look, never a recursion: tags can nest
    if after.startswith(b"fLaC"):
        return FLAC
    return AAC if _mpeg_audio(after) is AAC else MP3


def _mpeg_audio(head: bytes) -> Kind | None:
    if len(head) < 4 or head[0] != 0xFF:
        return None
    if head[1] & 0xF6 == 0xF0:                     # 12-bit sync, layer 00: ADTS AAC
        return AAC
    if head[1] & 0xE0 == 0xE0 and (head[1] >> 1) & 3 and (head[2] >> 4) != 0xF:  # layer I-III, valid bitrate
        return MP3
    return None


def describe(data: bytes) -> str:
    """What a refused file looks like, for error messages (never its content)."""
    head = bytes(data[:HEAD_BYTES]).lstrip(b"\xef\xbb\xbf \t\r\n")
    lower = head.lower()
    if not data:
        return "an empty file"
    if lower.startswith(b"ffconcat") or lower.startswith(b"file "):
        return "a concat script"
    if lower.startswith(b"#extm3u") or lower.startswith(b"[playlist]") or b"://" in head:
        return "a playlist or a list of URLs"
    if lower.startswith((b"<?xml", b"<svg", b"<!doctype", b"<html", b"<")):
        return "HTML, SVG or XML"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "text"
    return "a format that is not accepted"


def served_type(content_type: str | None) -> str:
    """The Content-Type /files sends for a stored type: itself when it is on the inline
    allow-list, else application/octet-stream."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    return ctype if ctype in INLINE_TYPES else OCTET


def stored_type(data: bytes, declared: str | None = None) -> Kind | None:
    """The stored kind of uploaded bytes. `declared` only tells an audio-only upload in an
    audio/video container (MP4, WebM) from a video; it never makes a file media."""
    kind = sniff(data)
    audio = (declared or "").lower().startswith("audio/")
    if kind is MP4 and audio:
        return M4A
    if kind is WEBM and audio:
        return Kind("WebM", "audio/webm", ".webm", demuxer="matroska")
    return kind
