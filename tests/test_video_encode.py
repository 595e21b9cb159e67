"""Mp4Writer and FragmentedMp4Encoder, read back with PyAV."""
from __future__ import annotations

import io
import math
import struct
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from flashhead import constants as C
from flashhead.video import fmp4
from flashhead.video.encode import FragmentedMp4Encoder, Mp4Writer
from flashhead.video.probe import probe, read_audio, read_frames

SPF = C.SAMPLES_PER_FRAME


@pytest.fixture(scope="module")
def portrait(portrait_path) -> np.ndarray:
    return np.asarray(Image.open(portrait_path).convert("RGB"))


def moving_frames(portrait: np.ndarray, n: int) -> np.ndarray:
    """A portrait with a bar that moves, so that frames differ."""
    frames = np.repeat(portrait[None], n, axis=0)
    for i in range(n):
        y = 40 + 10 * (i % 30)
        frames[i, y:y + 16, 60:200] = (255, 40, 40)
    return frames


def tone(seconds: float, f0: float = 200.0, f1: float = 2000.0) -> np.ndarray:
    """A sweep: unlike a steady tone it has one best alignment with itself."""
    t = np.arange(round(seconds * C.SAMPLE_RATE)) / C.SAMPLE_RATE
    return (0.4 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds)))).astype(np.float32)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255 ** 2 / max(mse, 1e-9))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


# --- Mp4Writer -------------------------------------------------------------------------------

def write_mp4(path, frames, audio, pieces=1):
    with Mp4Writer(path) as writer:
        f_cuts = np.linspace(0, len(frames), pieces + 1).astype(int)
        a_cuts = np.linspace(0, len(audio), pieces + 1).astype(int)
        for i in range(pieces):
            writer.write(frames[f_cuts[i]:f_cuts[i + 1]], audio[a_cuts[i]:a_cuts[i + 1]])


@pytest.fixture(scope="module")
def speech_mp4(tmp_path_factory, portrait):
    audio = tone(2.3)
    frames = moving_frames(portrait, math.ceil(len(audio) / SPF))
    path = tmp_path_factory.mktemp("mp4") / "speech.mp4"
    write_mp4(path, frames, audio)
    return path, frames, audio


def test_mp4_streams_and_duration(speech_mp4):
    path, frames, audio = speech_mp4
    info = probe(path)
    assert (info["width"], info["height"], info["fps"]) == (512, 512, 25.0)
    assert (info["video_codec"], info["audio_codec"], info["sample_rate"]) == ("h264", "aac", 16_000)
    assert info["pix_fmt"] == "yuv420p" and info["n_frames"] == len(frames) == 58
    speech = len(audio) / C.SAMPLE_RATE
    for key in ("duration", "video_duration", "audio_duration"):
        assert abs(info[key] - speech) <= C.FRAME_SECONDS, key


def test_mp4_is_faststart(speech_mp4):
    boxes = probe(speech_mp4[0])["boxes"]
    assert boxes[0] == "ftyp" and boxes.index("moov") < boxes.index("mdat")


def test_mp4_pictures_survive(speech_mp4):
    path, frames, _ = speech_mp4
    decoded = list(read_frames(path))
    assert len(decoded) == len(frames)
    for i in (0, 17, len(frames) - 1):
        assert psnr(decoded[i], frames[i]) > 32, i


def test_mp4_speech_is_aligned_and_not_cut(speech_mp4):
    path, _, audio = speech_mp4
    decoded = read_audio(path)
    assert len(decoded) >= len(audio)
    # The encoder's priming is trimmed: sample 0 of the file is sample 0 of the speech.
    lag = np.argmax(np.correlate(decoded[:4000], audio[:2000], mode="valid"))
    assert lag <= 1
    tail = slice(len(audio) - 1600, len(audio))  # the last 100 ms of speech
    assert rms(decoded[tail]) > 0.8 * rms(audio[tail])


def test_mp4_written_in_pieces_matches(tmp_path, portrait):
    audio = tone(1.37)
    frames = moving_frames(portrait, math.ceil(len(audio) / SPF))
    write_mp4(tmp_path / "pieces.mp4", frames, audio, pieces=5)
    info = probe(tmp_path / "pieces.mp4")
    assert info["n_frames"] == len(frames)
    assert abs(info["duration"] - len(audio) / C.SAMPLE_RATE) <= C.FRAME_SECONDS


@pytest.mark.parametrize("n_frames, seconds, expected_frames", [
    (10, 1.0, 25),   # too few frames: the last one is held to the end of the speech
    (40, 1.0, 40),   # too many frames: the audio is padded with silence
])
def test_mp4_lengths_are_evened_out(tmp_path, portrait, n_frames, seconds, expected_frames):
    write_mp4(tmp_path / "x.mp4", moving_frames(portrait, n_frames), tone(seconds))
    info = probe(tmp_path / "x.mp4")
    assert info["n_frames"] == expected_frames
    assert abs(info["audio_duration"] - expected_frames * C.FRAME_SECONDS) <= C.FRAME_SECONDS


def test_mp4_in_the_photos_own_framing(tmp_path, portrait):
    """Paste-back output: (width, height) instead of a square side."""
    frames = np.ascontiguousarray(moving_frames(portrait, 12)[:, 40:480, :])  # 512 wide, 440 high
    with Mp4Writer(tmp_path / "wide.mp4", size=(512, 440)) as writer:
        writer.write(frames, tone(12 * C.FRAME_SECONDS))
    info = probe(tmp_path / "wide.mp4")
    assert (info["width"], info["height"], info["n_frames"]) == (512, 440, 12)
    assert psnr(next(read_frames(tmp_path / "wide.mp4")), frames[0]) > 32
    with pytest.raises(ValueError, match="even"):
        Mp4Writer(tmp_path / "odd.mp4", size=(511, 440))


def test_mp4_rejects_wrong_frames(tmp_path):
    writer = Mp4Writer(tmp_path / "bad.mp4")
    with pytest.raises(ValueError, match="512"):
        writer.write(np.zeros((2, 256, 256, 3), np.uint8), tone(0.1))
    writer.close()


# --- FragmentedMp4Encoder --------------------------------------------------------------------

def track_runs(segment: bytes) -> dict[int, tuple[int, int, int]]:
    """track id -> (sample count, base decode time, flags of the first sample)."""
    runs = {}
    for traf in fmp4.find_all(segment, "moof/traf"):
        tfhd = fmp4.find_all(segment, "tfhd", traf.body.start, traf.body.stop)[0]
        tfdt = fmp4.find_all(segment, "tfdt", traf.body.start, traf.body.stop)[0]
        trun = fmp4.find_all(segment, "trun", traf.body.start, traf.body.stop)[0]
        track_id = struct.unpack_from(">I", segment, tfhd.body.start + 4)[0]
        base = struct.unpack_from(">Q", segment, tfdt.body.start + 4)[0]
        count = struct.unpack_from(">I", segment, trun.body.start + 4)[0]
        first_flags = struct.unpack_from(">I", segment, trun.body.start + 12 + 8)[0]
        runs[track_id] = (count, base, first_flags)
    return runs


@pytest.fixture(scope="module")
def streamed(portrait):
    """3 chunks of CHUNK_FRAMES frames + the speech they carry, encoded one by one."""
    n_chunks = 3
    audio = tone(n_chunks * C.CHUNK_FRAMES * C.FRAME_SECONDS - 0.013)  # a part-frame of speech at the end
    frames = moving_frames(portrait, math.ceil(len(audio) / SPF))
    encoder = FragmentedMp4Encoder()
    init = encoder.init_segment()
    segments = []
    for k in range(n_chunks):
        f = frames[k * C.CHUNK_FRAMES:(k + 1) * C.CHUNK_FRAMES]
        a = audio[k * C.CHUNK_SAMPLES:(k + 1) * C.CHUNK_SAMPLES]
        segments.append(encoder.encode_chunk(f, a))  # must hold this chunk's frames already
    final = encoder.finish()
    return encoder, init, segments, final, frames, audio


def test_init_segment(streamed):
    encoder, init, *_ = streamed
    assert [b.kind for b in fmp4.iter_boxes(init)] == ["ftyp", "moov"]
    assert {t.handler for t in fmp4.read_tracks(init)} == {"vide", "soun"}
    assert fmp4.find_all(init, "moov/mvex/trex")
    avc, aac = encoder.codecs.split(", ")
    assert avc.startswith("avc1.42") and aac == "mp4a.40.2"  # baseline profile, AAC-LC
    assert encoder.mime_type == f'video/mp4; codecs="{encoder.codecs}"'


def test_each_chunk_segment_comes_out_with_its_chunk(streamed):
    encoder, init, segments, final, frames, _ = streamed
    tracks = {t.handler: t.track_id for t in fmp4.read_tracks(init)}
    previous_video_end = 0
    for k, segment in enumerate(segments):
        assert [b.kind for b in fmp4.iter_boxes(segment)] == ["moof", "mdat"]
        runs = track_runs(segment)
        count, base, flags = runs[tracks["vide"]]
        assert count == C.CHUNK_FRAMES, k            # not held back until a later chunk
        assert flags == fmp4.SYNC_SAMPLE, k           # starts with a keyframe
        assert base >= previous_video_end
        previous_video_end = base
        assert tracks["soun"] in runs                 # sound travels with its pictures
    # the video encoder holds nothing back; the AAC encoder's last packets come with finish()
    assert set(track_runs(final)) == {tracks["soun"]}


def test_segments_decode_together(streamed):
    _, init, segments, final, frames, audio = streamed
    data = init + b"".join(segments) + final
    info = probe(data)
    assert info["n_frames"] == len(frames) == 3 * C.CHUNK_FRAMES
    assert (info["width"], info["height"], info["video_codec"], info["audio_codec"]) == (512, 512, "h264", "aac")
    assert abs(info["video_duration"] - info["audio_duration"]) <= C.FRAME_SECONDS
    decoded = list(read_frames(data))
    assert len(decoded) == len(frames)
    assert min(psnr(d, f) for d, f in zip(decoded, frames)) > 30
    sound = read_audio(data)
    assert rms(sound[-2400:-800]) > 0.8 * rms(audio[-1600:])  # the end of the speech is there


def test_each_segment_decodes_on_its_own(streamed):
    """A viewer joining late gets the init segment and then any segment: it must decode."""
    _, init, segments, _, frames, _ = streamed
    for k in (1, 2):
        decoded = list(read_frames(init + segments[k]))
        assert len(decoded) == C.CHUNK_FRAMES
        assert psnr(decoded[0], frames[k * C.CHUNK_FRAMES]) > 30


def test_chunks_without_audio_and_finish_pads(portrait):
    encoder = FragmentedMp4Encoder()
    init = encoder.init_segment()
    first = encoder.encode_chunk(moving_frames(portrait, 5))   # pictures only
    second = encoder.encode_chunk(np.zeros((0, 512, 512, 3), np.uint8), tone(0.4))  # sound only
    last = encoder.finish()
    assert encoder.finish() == b""
    with pytest.raises(RuntimeError):
        encoder.encode_chunk(moving_frames(portrait, 1))
    info = probe(init + first + second + last)
    assert info["n_frames"] == 10  # 0.4 s of speech needs 10 frames: the last one is held
    assert abs(info["video_duration"] - info["audio_duration"]) <= C.FRAME_SECONDS


def test_decoding_fragmented_output_with_pyav_demuxer(streamed):
    _, init, segments, final, _, _ = streamed
    with av.open(io.BytesIO(init + b"".join(segments) + final)) as container:
        keyframes = [p.is_keyframe for p in container.demux(video=0) if p.size]
    assert sum(keyframes) == len(segments)
    assert [i for i, key in enumerate(keyframes) if key] == [0, 8, 16]


def test_dropping_an_unfinished_encoder_does_not_crash_the_process():
    """A viewer leaving mid-stream: the server drops the encoder without finish()."""
    code = (
        "import gc, numpy as np\n"
        "from flashhead.video.encode import FragmentedMp4Encoder\n"
        "e = FragmentedMp4Encoder()\n"
        "e.encode_chunk(np.zeros((8, 512, 512, 3), np.uint8), np.zeros(5120, np.float32))\n"
        "del e\n"
        "gc.collect()\n"
        "FragmentedMp4Encoder()  # left for interpreter exit\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


def test_webrtc_i420_is_bt601_limited_range():
    """The raw (WebRTC) path's I420: studio-swing BT.601 planes, Y then U then V, as the RTP
    encoders take them. White, black, red and blue in; their textbook Y, Cb, Cr out (within 1)."""
    from flashhead.engine.sessions import i420_bytes

    colours = {(255, 255, 255): (235, 128, 128), (0, 0, 0): (16, 128, 128),
               (255, 0, 0): (81, 90, 240), (0, 0, 255): (41, 240, 110)}
    frames = np.stack([np.full((16, 16, 3), c, np.uint8) for c in colours])
    data = i420_bytes(frames)
    assert len(data) == len(colours) * 16 * 16 * 3 // 2
    planes = np.frombuffer(data, np.uint8).reshape(len(colours), 24, 16).astype(int)
    for got, want in zip(planes, colours.values()):
        assert np.abs(got[:16] - want[0]).max() <= 1
        assert np.abs(got[16:20] - want[1]).max() <= 1
        assert np.abs(got[20:24] - want[2]).max() <= 1
