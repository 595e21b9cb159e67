"""ISO BMFF (MP4) boxes: read the box tree, write movie fragments (moof + mdat).

Only what the streaming encoder needs: find tracks in an init segment, and write one fragment
holding one run of samples per track (ISO/IEC 14496-12 8.8: mfhd, traf, tfhd, tfdt, trun).
"""
from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

CONTAINERS = {"moov", "trak", "mdia", "minf", "stbl", "mvex", "moof", "traf", "edts", "dinf"}

# sample_flags (8.8.3.1): depends_on=2 marks a sync sample; depends_on=1 + non_sync for the rest.
SYNC_SAMPLE = 0x02000000
NON_SYNC_SAMPLE = 0x01010000

TFHD_DEFAULT_BASE_IS_MOOF = 0x020000
TRUN_DATA_OFFSET = 0x000001
TRUN_DURATION = 0x000100
TRUN_SIZE = 0x000200
TRUN_FLAGS = 0x000400


@dataclass(frozen=True)
class Box:
    kind: str
    offset: int   # of the box header in the buffer
    size: int     # whole box, header included
    header: int   # header length (8, or 16 with a 64-bit size)

    @property
    def body(self) -> slice:
        return slice(self.offset + self.header, self.offset + self.size)


def iter_boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[Box]:
    """Boxes lying one after another in data[start:end]; stops at a box that is cut short."""
    end = len(data) if end is None else end
    offset = start
    while offset + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, offset)
        header = 8
        if size == 1:
            if offset + 16 > end:
                return
            size, header = struct.unpack_from(">Q", data, offset + 8)[0], 16
        elif size == 0:
            size = end - offset
        if size < header or offset + size > end:
            return
        yield Box(kind.decode("latin-1"), offset, size, header)
        offset += size


def complete_length(data: bytes) -> int:
    """Length of the longest prefix of `data` made of whole top-level boxes."""
    boxes = list(iter_boxes(data))
    return boxes[-1].offset + boxes[-1].size if boxes else 0


def find_all(data: bytes, path: str, start: int = 0, end: int | None = None) -> list[Box]:
    """Boxes at a '/'-separated path, e.g. find_all(init, 'moov/trak/mdia/mdhd')."""
    first, _, rest = path.partition("/")
    found = []
    for box in iter_boxes(data, start, end):
        if box.kind == first:
            if not rest:
                found.append(box)
            elif box.kind in CONTAINERS:
                found += find_all(data, rest, box.body.start, box.body.stop)
    return found


@dataclass(frozen=True)
class TrackInfo:
    track_id: int
    handler: str      # 'vide' or 'soun'
    timescale: int


def read_tracks(init: bytes) -> list[TrackInfo]:
    """Track id, handler and media timescale of every trak in an init segment."""
    tracks = []
    for trak in find_all(init, "moov/trak"):
        inner = (trak.body.start, trak.body.stop)
        tkhd = find_all(init, "tkhd", *inner)[0]
        version = init[tkhd.body.start]
        track_id = struct.unpack_from(">I", init, tkhd.body.start + (20 if version == 1 else 12))[0]
        mdhd = find_all(init, "mdia/mdhd", *inner)[0]
        version = init[mdhd.body.start]
        timescale = struct.unpack_from(">I", init, mdhd.body.start + (20 if version == 1 else 12))[0]
        hdlr = find_all(init, "mdia/hdlr", *inner)[0]
        handler = init[hdlr.body.start + 8:hdlr.body.start + 12].decode("latin-1")
        tracks.append(TrackInfo(track_id, handler, timescale))
    return tracks


@dataclass
class TrackRun:
    """Consecutive samples of one track for one fragment."""

    track_id: int
    base_time: int                       # decode time of the first sample, in track timescale
    durations: list[int] = field(default_factory=list)
    flags: list[int] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)

    def add(self, payload: bytes, duration: int, sync: bool) -> None:
        self.payloads.append(payload)
        self.durations.append(duration)
        self.flags.append(SYNC_SAMPLE if sync else NON_SYNC_SAMPLE)


def _box(kind: bytes, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def _full_box(kind: bytes, version: int, flags: int, *parts: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *parts)


def _traf(run: TrackRun, data_offset: int) -> bytes:
    tfhd = _full_box(b"tfhd", 0, TFHD_DEFAULT_BASE_IS_MOOF, struct.pack(">I", run.track_id))
    tfdt = _full_box(b"tfdt", 1, 0, struct.pack(">Q", run.base_time))
    entries = b"".join(
        struct.pack(">III", d, len(p), f) for d, p, f in zip(run.durations, run.payloads, run.flags)
    )
    trun_flags = TRUN_DATA_OFFSET | TRUN_DURATION | TRUN_SIZE | TRUN_FLAGS
    trun = _full_box(b"trun", 0, trun_flags, struct.pack(">Ii", len(run.payloads), data_offset), entries)
    return _box(b"traf", tfhd, tfdt, trun)


def write_fragment(sequence: int, runs: list[TrackRun]) -> bytes:
    """One moof + mdat holding `runs` (empty runs are left out); b'' when nothing to write."""
    runs = [r for r in runs if r.payloads]
    if not runs:
        return b""
    # Build once with zero offsets to learn the moof size (it does not depend on the offsets).
    moof_size = len(_box(b"moof", _full_box(b"mfhd", 0, 0, struct.pack(">I", sequence)),
                         *(_traf(r, 0) for r in runs)))
    offsets, position = [], moof_size + 8  # samples start after the mdat header
    for run in runs:
        offsets.append(position)
        position += sum(len(p) for p in run.payloads)
    moof = _box(b"moof", _full_box(b"mfhd", 0, 0, struct.pack(">I", sequence)),
                *(_traf(r, o) for r, o in zip(runs, offsets)))
    mdat = _box(b"mdat", *(p for r in runs for p in r.payloads))
    return moof + mdat


def annexb_to_avcc(data: bytes) -> bytes:
    """H.264 Annex B (start codes) -> MP4 sample format (4-byte big-endian NAL lengths)."""
    out = bytearray()
    for nal in data.split(b"\x00\x00\x01"):
        nal = nal.rstrip(b"\x00")  # the leading zero of a 4-byte start code, trailing zero bytes
        if nal:
            out += struct.pack(">I", len(nal)) + nal
    return bytes(out)


def avc_codec_string(sps: bytes) -> str:
    """RFC 6381 'avc1.PPCCLL' from an SPS NAL unit (header byte first)."""
    return "avc1." + sps[1:4].hex().upper()


def first_sps(extradata: bytes) -> bytes | None:
    """The SPS inside Annex B or avcC extradata."""
    if extradata[:1] == b"\x01" and len(extradata) > 8:  # avcC
        length = struct.unpack_from(">H", extradata, 6)[0]
        return extradata[8:8 + length]
    for nal in extradata.split(b"\x00\x00\x01"):
        nal = nal.rstrip(b"\x00")
        if nal and nal[0] & 0x1F == 7:
            return nal
    return None
