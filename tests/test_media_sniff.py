"""The sniffer and the media allow-lists: real files of every accepted kind are recognised, and
containers that can open another resource (ffconcat, playlists, image sequences) never reach a
demuxer that would follow them."""
from __future__ import annotations

import io
import struct
import wave

import av
import numpy as np
import pytest
from PIL import Image

from flashhead.errors import InputError
from flashhead.media import sniff as S
from flashhead.media.audio import decode_audio, open_container
from flashhead.media.image import load_image

MARK = 0x1234                      # the secret file's every sample: findable in decoded audio


def secret_wav(path) -> bytes:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(np.full(16_000, MARK, "<i2").tobytes())
    return path.read_bytes()


def encoded_audio(fmt: str, codec: str, rate: int = 24_000) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, rate // 2), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt, codec, kind", [
    ("wav", "pcm_s16le", S.WAV), ("mp3", "libmp3lame", S.MP3), ("adts", "aac", S.AAC),
    ("ipod", "aac", S.M4A), ("mp4", "aac", S.MP4), ("ogg", "libopus", S.OGG), ("ogg", "libvorbis", S.OGG),
    ("flac", "flac", S.FLAC), ("webm", "libopus", S.WEBM),
])
def test_audio_containers_are_recognised(fmt, codec, kind):
    rate = 48_000 if codec == "libopus" else 24_000
    assert S.sniff(encoded_audio(fmt, codec, rate)) is kind


def test_streamed_mp4_segments_are_mp4():
    """The streaming encoder's init segment (ftyp) and media segments (moof) are both video/mp4."""
    from flashhead import constants as C
    from flashhead.video.encode import FragmentedMp4Encoder

    enc = FragmentedMp4Encoder()
    frames = np.zeros((2, C.SIZE, C.SIZE, 3), np.uint8)
    assert S.sniff(enc.init_segment()) is S.MP4
    assert S.sniff(enc.encode_chunk(frames, np.zeros(2 * C.SAMPLES_PER_FRAME, np.float32))) is S.MP4


def test_flac_behind_an_id3_tag_decodes():
    flac = encoded_audio("flac", "flac", 16_000)
    tag = b"ID3\x04\x00\x00" + bytes([0, 0, 1, 0]) + b"\x00" * 128      # syncsafe size 128
    assert S.sniff(tag + flac) is S.FLAC
    assert S.sniff(tag) is S.MP3 and S.sniff(tag + b"\xff\xfb\x90\x00") is S.MP3
    assert decode_audio(tag + flac).size == 8000
    nested = b"ID3\x04\x00\x00\x00\x00\x00\x00" * 5000                  # tags in tags: no recursion
    assert S.sniff(nested) is S.MP3


@pytest.mark.parametrize("fmt, kind", [("PNG", S.PNG), ("JPEG", S.JPEG), ("WEBP", S.WEBP), ("GIF", S.GIF),
                                       ("BMP", S.BMP), ("TIFF", S.TIFF)])
def test_image_formats_are_recognised(fmt, kind):
    assert S.sniff(image_bytes(fmt)) is kind


@pytest.mark.parametrize("data", [
    b"", b"\xff", b"RIFF", b"ffconcat version 1.0\nfile 'a.wav'\n", b"#EXTM3U\n#EXTINF:1,\na.wav\n",
    b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>", b"<!doctype html><p>x",
    b"BM this is text", b"\x1a\x45\xdf\xa3\x01\x00\x00\x00\x00\x00\x00\x1f\x42\x82\x88matroska",
    b"\x00\x00\x00\x18ftypavif\x00\x00\x00\x00", b"\xff\xff\xff\xff" * 8, b"PK\x03\x04zipfile",
    b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\n",
])
def test_everything_else_is_not_media(data):
    assert S.sniff(data) is None
    assert S.served_type(S.stored_type(data, "image/png").mime if S.stored_type(data) else None) == S.OCTET


def test_stored_type_ignores_the_declared_type_except_audio_in_a_video_container():
    png = image_bytes("PNG")
    assert S.stored_type(png, "text/html") is S.PNG
    assert S.stored_type(b"<html><script>x</script>", "image/png") is None
    assert S.stored_type(encoded_audio("mp4", "aac"), "audio/mp4") is S.M4A
    assert S.stored_type(encoded_audio("mp4", "aac"), "video/mp4") is S.MP4
    assert S.stored_type(encoded_audio("webm", "libopus", 48_000), "audio/webm").mime == "audio/webm"


@pytest.mark.parametrize("ctype, served", [
    ("image/png", "image/png"), ("video/mp4", "video/mp4"), ("audio/mpeg; charset=x", "audio/mpeg"),
    ("text/html", S.OCTET), ("image/svg+xml", S.OCTET), ("application/xhtml+xml", S.OCTET),
    ("text/plain", S.OCTET), ("", S.OCTET), (None, S.OCTET), ("IMAGE/PNG", "image/png"),
])
def test_served_type_is_an_allow_list(ctype, served):
    assert S.served_type(ctype) == served


# --- the attack the allow-list exists for ------------------------------------------------------

@pytest.fixture
def secret(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)           # FFmpeg resolves a relative path from the working folder
    return secret_wav(tmp_path / "secret.wav"), tmp_path / "secret.wav"


def _decodes_to_the_secret(data: bytes, **kw) -> bool:
    with av.open(io.BytesIO(data), **kw) as c:
        samples = np.concatenate([f.to_ndarray().ravel() for f in c.decode(audio=0)])
    return bool(samples.size) and bool(np.all(samples == MARK))


@pytest.mark.parametrize("script", [
    "ffconcat version 1.0\nfile 'secret.wav'\n",
    "ffconcat version 1.0\nfile '{abs}'\n",
    "ffconcat version 1.0\nfile 'file:secret.wav'\n",
    "ffconcat version 1.0\nfile 'subfile,,start,0,end,0,,:secret.wav'\n",
])
def test_ffconcat_naming_a_server_file_is_refused(secret, script):
    _, path = secret
    data = script.replace("{abs}", str(path)).encode()
    if "'secret.wav'" in script:         # (absolute paths: FFmpeg's own `safe` option refuses them)
        assert _decodes_to_the_secret(data), "precondition: plain FFmpeg follows this script"
    with pytest.raises(InputError, match="concat script") as exc:
        decode_audio(data)
    assert exc.value.field == "audio_url"
    assert "secret" not in str(exc.value) and str(path.parent) not in str(exc.value)


@pytest.mark.parametrize("text", [
    "#EXTM3U\n#EXTINF:1,\nsecret.wav\n",
    "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:secret.wav\n#EXT-X-ENDLIST\n",
    "concat:secret.wav|secret.wav",
    "secret.wav",
    "[playlist]\nFile1=secret.wav\n",
])
def test_playlists_and_protocol_strings_are_refused(secret, text):
    with pytest.raises(InputError) as exc:
        decode_audio(text.encode())
    assert exc.value.field == "audio_url" and "secret" not in str(exc.value)


def test_even_a_forced_concat_demuxer_cannot_open_a_file(secret):
    """Second line of defence: with our options, no protocol (file, http, subfile...) opens."""
    data = b"ffconcat version 1.0\nfile 'secret.wav'\n"
    assert _decodes_to_the_secret(data, format="concat")
    with pytest.raises((av.FFmpegError, ValueError)):
        with av.open(io.BytesIO(data), format="concat",
                     container_options={"protocol_whitelist": "none"}) as c:
            list(c.decode(audio=0))


def test_open_container_allows_only_the_named_demuxer(secret):
    data, _ = secret
    with open_container(data, "wav") as c:
        assert c.format.name == "wav"
    with pytest.raises((av.FFmpegError, ValueError)):
        with open_container(b"ffconcat version 1.0\nfile 'secret.wav'\n", "concat") as c:
            list(c.decode(audio=0))


def test_wav_header_in_front_of_a_script_is_read_as_samples(secret):
    """A polyglot: RIFF/WAVE header, then an ffconcat script as 'samples'. Decoded as PCM noise
    at worst; the named file's samples never appear."""
    script = b"ffconcat version 1.0\nfile 'secret.wav'\n" * 400
    header = (b"RIFF" + struct.pack("<I", 36 + len(script)) + b"WAVE" + b"fmt "
              + struct.pack("<IHHIIHH", 16, 1, 1, 16_000, 32_000, 2, 16) + b"data" + struct.pack("<I", len(script)))
    audio = decode_audio(header + script)
    assert not np.any(np.isclose(audio * 32768, MARK, atol=0.5))


@pytest.mark.parametrize("data", [b"image2 pattern %03d.png", b"img%d.jpg", b"file:///etc/passwd",
                                  b"<svg onload='alert(1)'/>"])
def test_image_field_refuses_sequences_and_markup(data):
    with pytest.raises(InputError, match="not a JPEG") as exc:
        load_image(data, field="image_url")
    assert exc.value.field == "image_url"


def test_audio_field_refuses_an_image_and_image_field_refuses_audio():
    with pytest.raises(InputError, match="is a format that is not accepted, not WAV"):
        decode_audio(image_bytes("PNG"))
    with pytest.raises(InputError, match="not a JPEG"):
        load_image(encoded_audio("wav", "pcm_s16le"))


def test_a_codec_without_a_decoder_is_refused_not_a_crash():
    """A WAV naming codec tag 0xBEEF: FFmpeg opens it with no decoder, and decoding that stream
    in PyAV 15 ends the process with SIGSEGV. decode_audio must refuse it first."""
    data = (b"RIFF" + struct.pack("<I", 36 + 3200) + b"WAVE" + b"fmt "
            + struct.pack("<IHHIIHH", 16, 0xBEEF, 1, 16_000, 32_000, 2, 16) + b"data" + struct.pack("<I", 3200)
            + b"\0" * 3200)
    with pytest.raises(InputError, match="no decoder") as exc:
        decode_audio(data)
    assert exc.value.field == "audio_url"
