"""WebRTC (WHEP) output of live sessions, with a real aiortc client on loopback.

The A/V test runs the real CPU renderer in a test mode that paints a marker: a white square in
the top-left corner of every frame whose audio holds a click (a full-scale pulse), black
otherwise. A click pushed at a frame boundary and its marker frame belong to the same media
time, so their times on the sender's clock (RTP timestamps mapped through each track's RTCP
sender reports, as a browser does for lip sync) must agree.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time

import httpx
import numpy as np
import pytest

from flashhead import constants as C
from stream_server import PORTRAIT, running_server, speech_pcm, tone_pcm
from whep_client import SDP, MarkerRenderer, WhepClient, shows_marker, upload

EP = C.TEXT_ENDPOINT
NTP_EPOCH = 2_208_988_800           # seconds from 1900 (NTP) to 1970 (time.time)
CLICK_SAMPLES = 320                 # 20 ms click: a full-scale 1 kHz burst (Opus drops DC pulses)


@pytest.fixture(scope="module")
def server(tmp_path_factory, engines):
    marked = dataclasses.replace(engines, renderer=MarkerRenderer(engines.renderer, clicks))
    with running_server(tmp_path_factory.mktemp("webrtc"), marked) as (base, key, app):
        yield base, key, app, upload(app, PORTRAIT, "image/png", base)


def clicks(audio):
    """Frames whose audio clicks (|x| > 0.9)."""
    return np.abs(audio).max(1) > 0.9


def speech_with_clicks(seconds: float, clicks_s: list[float]) -> bytes:
    """The speech excerpt below half level, with full-scale clicks starting at frame boundaries."""
    pcm = np.frombuffer(speech_pcm(seconds), "<i2").astype(np.float32) / 32768
    pcm = pcm * (0.45 / max(1e-6, np.abs(pcm).max()))
    for t in clicks_s:
        at = round(t * C.FPS) * C.SAMPLES_PER_FRAME
        pcm[at:at + CLICK_SAMPLES] = 0.99 * np.sin(2 * np.pi * 1000 * np.arange(CLICK_SAMPLES) / C.SAMPLE_RATE)
    return (pcm * 32767).astype("<i2").tobytes()


def run(coro):
    return asyncio.run(coro)


# ---- the helpers that read what the client received ----------------------------------------

def unwrap(ts: list[int]) -> np.ndarray:
    """32-bit RTP timestamps -> a monotonic int64 sequence (wraps undone)."""
    d = np.diff(np.asarray(ts, np.int64)) % 2**32
    d = np.where(d >= 2**31, d - 2**32, d)
    return np.concatenate([[ts[0]], ts[0] + np.cumsum(d)])


def sender_time(reports: list, rtp: int, rate: int) -> float:
    """The sender's NTP time of an RTP timestamp. Each sender report pairs the last packet's RTP
    timestamp with the time it left; a packet that left late (a busy machine) shifts its pair
    later, never earlier, so the earliest mapping over all reports is the on-time one."""
    def via(ntp: float, ref: int) -> float:
        d = (rtp - ref) % 2**32
        return ntp + (d - 2**32 if d >= 2**31 else d) / rate
    return min(via(ntp, ref) for ntp, ref in reports)


def marker_frames(got) -> list[int]:
    """RTP timestamps of the frames where the marker turns white."""
    out, lit = [], False
    for _, pts, y in got.video:
        on = shows_marker(y)
        if on and not lit:
            out.append(pts)
        lit = on
    return out


def click_times(got) -> list[int]:
    """RTP timestamps (48 kHz) of the click onsets in the received audio."""
    out, last = [], None
    for _, pts, a in got.audio:
        for i in np.flatnonzero(np.abs(a) > 0.6):
            ts = (pts + int(i)) % 2**32
            if last is None or (ts - last) % 2**32 > 48_000 // 4:
                out.append(ts)
            last = ts
    return out


# ---- tests --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_whep_session_streams_5s_of_speech_in_sync(server):
    base, key, _, image_url = server
    clicks = [1.0, 2.5, 4.0]

    async def scenario():
        client = WhepClient(base, EP, {"Authorization": f"Key {key}"})
        try:
            r = await client.connect(image_url, seed="7")
            assert r.status_code == 201 and r.headers["content-type"].startswith(SDP), r.text
            assert r.headers["location"].startswith(f"/{EP}/whep/")
            await asyncio.sleep(1.0)                                  # idle life first
            await client.push_pcm(speech_with_clicks(5.0, clicks))
            await client.send({"type": "end_of_speech"})
            await asyncio.sleep(1.5)
            assert await client.delete() == 204
            await asyncio.sleep(0.3)
            return client.got
        finally:
            await client.close()

    got = run(scenario())
    # Frames: as many as the media that was sent, on both tracks, and the 5 s of speech.
    v_pts = unwrap([p for _, p, _ in got.video])
    n_video = len(got.video)
    span = (v_pts[-1] - v_pts[0]) / (90_000 / C.FPS) + 1
    audio_s = sum(len(a) for _, _, a in got.audio) / 48_000
    assert abs(n_video - span) <= 2, (n_video, span)
    assert abs(n_video - audio_s * C.FPS) <= 2, (n_video, audio_s)
    speaking = [m for m in got.messages if m.get("type") == "chunk" and m["speaking"]]
    spoken_frames = round(sum(m["duration"] for m in speaking) * C.FPS)
    assert abs(spoken_frames - 5.0 * C.FPS) <= 2, spoken_frames
    # A/V: each click against its marker frame, on the sender's clock.
    marks, heard = marker_frames(got), click_times(got)
    assert len(marks) == len(clicks) and len(heard) == len(clicks), (marks, heard)
    offsets = [sender_time(got.reports["video"], v, 90_000) - sender_time(got.reports["audio"], a, 48_000)
               for v, a in zip(marks, heard)]
    print("A/V offsets (ms):", [round(o * 1000, 1) for o in offsets])
    assert all(abs(o) <= 0.040 for o in offsets), offsets
    # The idle video moved before the speech (blinks, breathing): not a frozen frame.
    assert np.abs(got.video[5][2].astype(int) - got.video[24][2].astype(int)).max() > 0


@pytest.mark.slow
def test_interrupt_stops_the_speech_within_200ms(server):
    """With 5 s of voice still queued: end to end (the client hears silence within 200 ms,
    aiortc's receive buffer included), and on the sender's clock (the server stops sending speech
    at once: what it buffered is dropped, not played out)."""
    base, key, _, image_url = server

    async def scenario():
        client = WhepClient(base, EP, {"Authorization": f"Key {key}"}, keep_pixels=False)
        try:
            assert (await client.connect(image_url)).status_code == 201
            await asyncio.sleep(0.5)
            await client.push_pcm(tone_pcm(8.0), realtime=False)     # 8 s of steady voice, queued at once
            await asyncio.sleep(2.5)
            t_interrupt, wall = time.monotonic(), time.time()
            await client.send({"type": "interrupt"})
            await asyncio.sleep(1.5)
            return client.got, t_interrupt, wall
        finally:
            await client.close()

    got, t_interrupt, wall = run(scenario())
    loud = [(t, rtp, float(np.sqrt((a ** 2).mean()))) for t, rtp, a in got.audio]
    before = [rms for t, _, rms in loud if t_interrupt - 0.5 < t < t_interrupt]
    assert len(before) >= 20 and min(before) > 0.05, "the voice was not playing right up to the interrupt"
    last_heard, last_rtp = max((t, rtp) for t, rtp, rms in loud if rms > 0.01)
    sent = sender_time(got.reports["audio"], last_rtp, 48_000) - NTP_EPOCH - wall
    print(f"speech heard until {1000 * (last_heard - t_interrupt):.0f} ms after the interrupt, "
          f"sent until {1000 * sent:.0f} ms")
    assert last_heard - t_interrupt <= 0.200
    assert sent <= 0.080                   # one Opus frame and its decoder tail (the buffer is <= jitter_s)
    chunks = [m for m in got.messages if m.get("type") == "chunk"]
    assert any(m["interrupted"] for m in chunks) and not chunks[-1]["speaking"]


def test_whep_refuses_bad_requests_with_clear_errors(server):
    base, key, _, image_url = server
    auth = {"Authorization": f"Key {key}"}
    url = f"{base}/{EP}/whep"
    with httpx.Client(timeout=30) as http:
        r = http.post(url, content="v=0", params={"image_url": image_url}, headers={**auth, "Content-Type": "text/plain"})
        assert r.status_code == 415 and r.json()["detail"][0]["loc"] == ["header", "Content-Type"], r.text
        r = http.post(url, content="not sdp at all", params={"image_url": image_url}, headers={**auth, "Content-Type": SDP})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "body"], r.text
        r = http.post(url, content=offer("audio"), params={"image_url": image_url},
                      headers={**auth, "Content-Type": SDP})
        assert r.status_code == 422 and "video" in r.json()["detail"][0]["msg"], r.text
        r = http.post(url, content=offer("audio"), headers={**auth, "Content-Type": SDP})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "image_url"], r.text
        r = http.post(url, content=offer("video", "audio"), params={"image_url": "file:///etc/passwd"},
                      headers={**auth, "Content-Type": SDP})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "image_url"], r.text
        r = http.post(url, content=offer("video", "audio"), params={"image_url": image_url, "seed": "x"},
                      headers={**auth, "Content-Type": SDP})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "seed"], r.text
        for params, field in (({"image_url": image_url, "seed": str(2 ** 63)}, "seed"),
                              ({"image_url": "http://[::1/face.png"}, "image_url")):
            r = http.post(url, content=offer("video", "audio"), params=params, headers={**auth, "Content-Type": SDP})
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", field], r.text
        good = offer("video", "audio")                          # offers no media can flow on:
        for bad in (good.replace("a=recvonly", "a=sendonly"), good.replace("a=recvonly", "a=inactive"),
                    "\r\n".join(line for line in good.split("\r\n") if not line.startswith("a=fingerprint")),
                    good + good):                               # (twice over: a 500 before)
            r = http.post(url, content=bad, params={"image_url": image_url}, headers={**auth, "Content-Type": SDP})
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "body"], r.text
        r = http.post(url, content="v=0\r\n" + "a=x\r\n" * 20_000, params={"image_url": image_url},
                      headers={**auth, "Content-Type": SDP})
        assert r.status_code == 413, r.text
        r = http.post(url, content=offer("audio"), params={"image_url": image_url}, headers={"Content-Type": SDP})
        assert r.status_code == 401, r.text
        r = http.delete(f"{url}/nope", headers=auth)
        assert r.status_code == 404 and r.json()["error_type"] == "not_found", r.text
        assert "/etc" not in r.text and "Traceback" not in r.text


def offer(*kinds: str) -> str:
    """An aiortc client's SDP offer that receives these kinds."""
    async def make():
        from aiortc import RTCConfiguration, RTCPeerConnection

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        for kind in kinds:
            pc.addTransceiver(kind, direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp
    return run(make())


@pytest.mark.slow
def test_whep_sessions_count_against_capacity_and_free_their_slot(tmp_path, engines):
    with running_server(tmp_path, engines, engine_capacity=1) as (base, key, app):
        image_url = upload(app, PORTRAIT, "image/png", base)

        async def scenario():
            auth = {"Authorization": f"Key {key}"}
            first, second = WhepClient(base, EP, auth), WhepClient(base, EP, auth)
            try:
                assert (await first.connect(image_url)).status_code == 201
                refused = await second.connect(image_url)
                assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1, refused.text
                assert refused.json()["error_type"] == "capacity_exceeded"
                assert app.state.ctx.engine.admission.in_flight == 1
                assert await first.delete() == 204
                assert app.state.ctx.engine.admission.in_flight == 0
                async with httpx.AsyncClient(base_url=base) as http:      # a browser holds a token, not the key
                    token = (await http.post("/rest/tokens/", json={"allowed_apps": ["flashhead"]}, headers=auth)).json()
                third = WhepClient(base, EP, {"Authorization": f"Bearer {token}"})
                assert (await third.connect(image_url)).status_code == 201
                bad = WhepClient(base, EP, {"Authorization": "Bearer not-a-token"})
                assert (await bad.connect(image_url)).status_code == 401
                await bad.close()
                await third.send({"type": "stop"})                 # the data channel ends it too
                deadline = time.monotonic() + 5
                while app.state.ctx.webrtc.sessions and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert not app.state.ctx.webrtc.sessions and app.state.ctx.engine.admission.in_flight == 0
                await third.close()
            finally:
                await first.close()
                await second.close()

        run(scenario())


@pytest.mark.slow
def test_a_stopping_server_tells_its_whep_peers_why_before_it_closes(tmp_path, engines):
    """A WHEP session holds no HTTP request, so a stopping server (SIGTERM) closes it at once: the
    peer first gets an x-fal-error SHUTTING_DOWN on its data channel, not just a closed connection."""
    serving = running_server(tmp_path, engines)
    base, key, app = serving.__enter__()
    stopped = False
    try:
        image_url = upload(app, PORTRAIT, "image/png", base)

        async def scenario():
            nonlocal stopped
            client = WhepClient(base, EP, {"Authorization": f"Key {key}"}, keep_pixels=False)
            try:
                assert (await client.connect(image_url)).status_code == 201
                await asyncio.wait_for(client.opened.wait(), 30)
                while not all(w.channel for w in app.state.ctx.webrtc.sessions.values()):
                    await asyncio.sleep(0.05)                 # the server's end of the channel too
                await asyncio.to_thread(serving.__exit__, None, None, None)      # the server stops
                stopped = True
                def errors():
                    return [m.get("error") for m in client.got.messages if m.get("type") == "x-fal-error"]
                deadline = time.monotonic() + 5
                while not errors() and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert errors() == ["SHUTTING_DOWN"], client.got.messages[-3:]
            finally:
                await client.close()

        run(scenario())
    finally:
        if not stopped:
            serving.__exit__(None, None, None)


@pytest.mark.slow
def test_a_peer_that_never_connects_frees_its_slot(tmp_path, engines):
    with running_server(tmp_path, engines, webrtc_connect_timeout_s=1.0) as (base, key, app):
        image_url = upload(app, PORTRAIT, "image/png", base)

        async def scenario():
            from aiortc import RTCConfiguration, RTCPeerConnection

            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("audio", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            async with httpx.AsyncClient(timeout=30) as http:      # the answer is never applied
                r = await http.post(f"{base}/{EP}/whep", content=pc.localDescription.sdp, params={"image_url": image_url},
                                    headers={"Authorization": f"Key {key}", "Content-Type": SDP})
            assert r.status_code == 201
            assert app.state.ctx.engine.admission.in_flight == 1
            await asyncio.sleep(2.0)
            assert app.state.ctx.engine.admission.in_flight == 0 and not app.state.ctx.webrtc.sessions
            await pc.close()

        run(scenario())


@pytest.mark.slow
def test_a_realtime_websocket_of_the_same_key_drives_a_whep_session(server):
    """The agent layout: a browser holds the WebRTC session, the agent's server attaches to it by
    id over the realtime WebSocket and speaks into it; another key cannot attach."""
    import msgpack
    from websockets.asyncio.client import connect

    base, key, app, image_url = server
    other = app.state.ctx.auth.keys.create("another tenant")
    ws_url = base.replace("http", "ws") + f"/{EP}/realtime"

    async def scenario():
        client = WhepClient(base, EP, {"Authorization": f"Key {key}"}, keep_pixels=False)
        try:
            assert (await client.connect(image_url)).status_code == 201
            sid = client.location.rsplit("/", 1)[1]
            async with connect(ws_url, additional_headers={"Authorization": f"Key {other}"}) as ws:
                await ws.send(msgpack.packb({"type": "attach", "session": sid}))
                refused = await asyncio.wait_for(ws.recv(), 10)
            async with connect(ws_url, additional_headers={"Authorization": f"Key {key}"}) as ws:
                await ws.send(msgpack.packb({"type": "attach", "session": sid}))
                attached = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 10), raw=False)
                await asyncio.sleep(0.5)
                t_speech = time.monotonic()
                for at in range(0, 32000 * 2, 1280):                     # 2 s of speech, in real time
                    await ws.send(msgpack.packb({"type": "audio", "pcm": speech_with_clicks(2.0, [])[at:at + 1280]}))
                    await asyncio.sleep(0.04)
                await ws.send(msgpack.packb({"type": "end_of_speech"}))
                await asyncio.sleep(1.0)
                await ws.send(msgpack.packb({"type": "stop"}))
                stopped = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 10), raw=False)
            return refused, attached, stopped, client.got, t_speech
        finally:
            await client.close()

    refused, attached, stopped, got, t_speech = run(scenario())
    assert isinstance(refused, str) and '"NOT_FOUND"' in refused, refused
    assert attached == {"type": "attached", "session": attached["session"]}
    loud = [t for t, _, a in got.audio if float(np.sqrt((a ** 2).mean())) > 0.05]
    assert loud and min(loud) > t_speech and max(loud) - min(loud) > 1.0, "the pushed speech was not heard"
    assert stopped["type"] == "stopped" and not app.state.ctx.webrtc.sessions
