// FlashHead playground: streamed generation over SSE and a live session over the realtime
// WebSocket, both played through MediaSource from fragmented-MP4 segments; and the same live
// session over WebRTC (WHEP), driven through its data channel. No build step.
import { encode, decode } from "/playground/msgpack.js";

const $ = (id) => document.getElementById(id);
const video = $("video");
const state = { generating: false, done: false, result: null, chunks: 0, error: null, live: null, rtc: null };
window.playground = state;  // read by the browser test

function log(line) {
  const el = $("status");
  el.textContent = `${line}\n${el.textContent}`.slice(0, 4000);
}

// The API key lives only in this tab's #key input (memory): never in localStorage,
// sessionStorage, cookies or the URL, so no other page or later visitor can read it back.
function authHeaders() {
  const key = $("key").value.trim();
  return key ? { Authorization: `Key ${key}` } : {};
}

function dataUriBytes(uri) {
  const b64 = uri.slice(uri.indexOf(",") + 1);
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

function bytesToDataUri(bytes, mime) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return `data:${mime};base64,${btoa(s)}`;
}

// --- MediaSource player: init segment once, then media segments in order -----------------
class SegmentPlayer {
  async start(mime, init) {
    if (!window.MediaSource || !MediaSource.isTypeSupported(mime)) throw new Error(`this browser cannot play ${mime}`);
    this.queue = [];
    this.ended = false;
    this.source = new MediaSource();
    video.src = URL.createObjectURL(this.source);
    await new Promise((ok) => this.source.addEventListener("sourceopen", ok, { once: true }));
    this.buffer = this.source.addSourceBuffer(mime);
    this.buffer.addEventListener("updateend", () => this.pump());
    this.append(init);
  }
  append(bytes) { this.queue.push(bytes); this.pump(); }
  end() { this.ended = true; this.pump(); }
  pump() {
    if (!this.buffer || this.buffer.updating) return;
    if (this.queue.length) { this.buffer.appendBuffer(this.queue.shift()); this.play(); return; }
    if (this.ended && this.source.readyState === "open") this.source.endOfStream();
  }
  play() {
    if (!video.paused) return;
    video.play().catch(() => { video.muted = true; video.play().catch(() => {}); });
  }
}

// --- portrait ---------------------------------------------------------------------------
let config = null;
let portraitUrl = null;

async function samplePortrait() {
  const bytes = new Uint8Array(await (await fetch(config.sample_portrait)).arrayBuffer());
  return bytesToDataUri(bytes, "image/png");
}

async function uploadPortrait(file) {
  // The storage API the JS client uses: initiate, then PUT the bytes; falls back to a data URI.
  try {
    const r = await fetch(config.upload_initiate_url, {
      method: "POST", headers: { ...authHeaders(), "Content-Type": "application/json" },
      body: JSON.stringify({ content_type: file.type || "image/png", file_name: file.name }),
    });
    if (!r.ok) throw new Error(`initiate: HTTP ${r.status}`);
    const { upload_url, file_url } = await r.json();
    const put = await fetch(upload_url, { method: "PUT", headers: { "Content-Type": file.type }, body: file });
    if (!put.ok) throw new Error(`upload: HTTP ${put.status}`);
    $("portrait-note").textContent = `uploaded: ${file_url}`;
    return file_url;
  } catch (err) {
    $("portrait-note").textContent = `storage upload failed (${err.message}); sending the image inline`;
    return bytesToDataUri(new Uint8Array(await file.arrayBuffer()), file.type || "image/png");
  }
}

async function choosePortrait() {
  const upload = document.querySelector("input[name=portrait]:checked").value === "upload";
  const file = $("portrait-file").files[0];
  portraitUrl = upload && file ? await uploadPortrait(file) : await samplePortrait();
  $("portrait-preview").src = upload && file ? URL.createObjectURL(file) : config.sample_portrait;
}

// --- streamed generation over SSE -----------------------------------------------------------
async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value.replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data) yield JSON.parse(data);
    }
  }
}

async function generate() {
  Object.assign(state, { generating: true, done: false, result: null, chunks: 0, error: null });
  $("generate").disabled = true;
  $("download").hidden = true;
  const player = new SegmentPlayer();
  try {
    if (!portraitUrl) await choosePortrait();
    const seed = $("seed").value === "" ? undefined : Number($("seed").value);
    const body = { image_url: portraitUrl, text: $("text").value, voice: $("voice").value,
                   stability: Number($("stability").value), seed };
    const t0 = performance.now();
    const r = await fetch(`/${config.text_endpoint}/stream`, {
      method: "POST", body: JSON.stringify(body),
      headers: { ...authHeaders(), "Content-Type": "application/json", Accept: "text/event-stream" },
    });
    if (!r.ok) throw new Error(`HTTP ${r.status}: ${await r.text()}`);
    for await (const ev of sseEvents(r)) {
      if (ev.error_type) throw new Error(`${ev.error_type}: ${typeof ev.detail === "string" ? ev.detail : JSON.stringify(ev.detail)}`);
      if (ev.video) { state.result = ev; break; }
      if (ev.init_segment) await player.start(ev.mime, dataUriBytes(ev.init_segment));
      player.append(dataUriBytes(ev.segment));
      state.chunks += 1;
      if (ev.index === 0) log(`first chunk after ${Math.round(performance.now() - t0)} ms`);
    }
    player.end();
    if (!state.result) throw new Error("the stream ended without a final output");
    $("download").href = state.result.video.url;
    $("download").hidden = false;
    log(`done: ${state.chunks} chunks, ${state.result.duration.toFixed(2)} s video, seed ${state.result.seed}`);
  } catch (err) {
    state.error = err.message;
    log(`error: ${err.message}`);
  } finally {
    Object.assign(state, { generating: false, done: true });
    $("generate").disabled = false;
  }
}

// --- live session over the realtime WebSocket ----------------------------------------------
async function realtimeUrl(endpoint) {
  const r = await fetch(config.token_url, {
    method: "POST", headers: { ...authHeaders(), "Content-Type": "application/json" },
    body: JSON.stringify({ allowed_apps: [endpoint.split("/")[1]], token_expiration: 120 }),
  });
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const base = `${scheme}://${location.host}/${endpoint}/realtime`;
  if (!r.ok) return base;  // no token (no or a bad key): the socket will say why
  return `${base}?fal_jwt_token=${encodeURIComponent(await r.json())}`;
}

function wavPcm16(buffer) {
  // The sample is PCM16 mono 16 kHz: find the "data" chunk and return its bytes.
  const view = new DataView(buffer);
  for (let p = 12; p + 8 <= buffer.byteLength;) {
    const id = String.fromCharCode(...new Uint8Array(buffer, p, 4));
    const size = view.getUint32(p + 4, true);
    if (id === "data") return new Uint8Array(buffer, p + 8, Math.min(size, buffer.byteLength - p - 8));
    p += 8 + size + (size & 1);
  }
  throw new Error("no data chunk in the sample WAV");
}

class LiveDemo {
  async start() {
    if (!portraitUrl) await choosePortrait();
    this.player = new SegmentPlayer();
    this.ws = new WebSocket(await realtimeUrl(config.text_endpoint));
    this.ws.binaryType = "arraybuffer";
    this.ws.onmessage = (m) => this.onMessage(m.data);
    this.ws.onclose = () => { log("live session closed"); setLive(false); };
    await new Promise((ok, fail) => { this.ws.onopen = ok; this.ws.onerror = () => fail(new Error("socket error")); });
    this.send({ type: "start", image_url: portraitUrl, pace: true });
  }
  send(msg) { this.ws.send(encode(msg)); }
  async onMessage(data) {
    const msg = typeof data === "string" ? JSON.parse(data) : decode(data);
    if (msg.type === "x-fal-error") { log(`live error: ${msg.error} ${msg.reason || ""}`); return; }
    if (msg.type === "started") {
      await this.player.start(msg.mime, msg.init_segment);
      log("live session started: idling");
      setLive(true);
    } else if (msg.type === "chunk") {
      this.player.append(msg.segment);
      state.live = { index: msg.index, speaking: msg.speaking };
    }
  }
  async speak() {
    const pcm = wavPcm16(await (await fetch(config.sample_speech)).arrayBuffer());
    const step = 1280;  // 40 ms of PCM16 at 16 kHz
    let at = 0;
    clearInterval(this.timer);
    this.timer = setInterval(() => {
      if (at >= pcm.length) { clearInterval(this.timer); this.send({ type: "end_of_speech" }); return; }
      this.send({ type: "audio", pcm: pcm.slice(at, at + step) });
      at += step;
    }, 40);
    log("speaking the sample WAV as live audio");
  }
  interrupt() { clearInterval(this.timer); this.send({ type: "interrupt" }); log("interrupted"); }
  stop() { clearInterval(this.timer); this.send({ type: "stop" }); }
}

function setLive(on) {
  $("live-start").disabled = on;
  for (const id of ["live-speak", "live-interrupt", "live-stop"]) $(id).disabled = !on;
}


// --- live session over WebRTC (WHEP + data channel) -------------------------------------------
async function httpPortraitUrl() {
  // WHEP takes the portrait as a query parameter: a stored file's URL, not a data URI.
  if (!portraitUrl) await choosePortrait();
  if (!portraitUrl.startsWith("data:")) return portraitUrl;
  const blob = await (await fetch(portraitUrl)).blob();
  portraitUrl = await uploadPortrait(new File([blob], "portrait.png", { type: blob.type || "image/png" }));
  if (portraitUrl.startsWith("data:")) throw new Error("the portrait could not be stored (needed for WebRTC)");
  return portraitUrl;
}

class RtcDemo {
  constructor() {
    this.video = $("rtc-video");
    state.rtc = { connected: false, index: -1, speaking: false, chunks: 0, interrupted: 0, latency_ms: null, errors: [] };
  }
  async start() {
    const imageUrl = await httpPortraitUrl();
    this.pc = new RTCPeerConnection({ iceServers: [] });
    this.pc.addTransceiver("video", { direction: "recvonly" });
    this.pc.addTransceiver("audio", { direction: "recvonly" });
    this.channel = this.pc.createDataChannel("control");
    this.channel.binaryType = "arraybuffer";
    this.channel.onmessage = (m) => this.onMessage(decode(new Uint8Array(m.data)));
    const opened = new Promise((ok) => { this.channel.onopen = ok; });
    this.pc.ontrack = (ev) => {
      this.video.srcObject = ev.streams[0] || new MediaStream([ev.track]);
      this.video.hidden = false;
      $("video").hidden = true;
    };
    this.pc.onconnectionstatechange = () => {
      state.rtc.connected = this.pc.connectionState === "connected";
      if (["failed", "closed"].includes(this.pc.connectionState)) { log(`WebRTC ${this.pc.connectionState}`); setRtc(false); }
    };
    await this.pc.setLocalDescription(await this.pc.createOffer());
    await new Promise((ok) => {            // no trickle ICE: the offer carries its candidates
      if (this.pc.iceGatheringState === "complete") return ok();
      this.pc.onicegatheringstatechange = () => this.pc.iceGatheringState === "complete" && ok();
      setTimeout(ok, 2000);
    });
    const query = new URLSearchParams({ image_url: imageUrl });
    const r = await fetch(`/${config.text_endpoint}/whep?${query}`, {
      method: "POST", body: this.pc.localDescription.sdp,
      headers: { ...authHeaders(), "Content-Type": "application/sdp" },
    });
    if (r.status !== 201) throw new Error(`WHEP: HTTP ${r.status}: ${await r.text()}`);
    this.location = r.headers.get("Location");
    await this.pc.setRemoteDescription({ type: "answer", sdp: await r.text() });
    await opened;
    this.video.play().catch(() => {});
    log(`WebRTC session ${this.location.split("/").pop()} started: idling`);
    setRtc(true);
  }
  send(msg) { this.channel.send(encode(msg)); }
  onMessage(msg) {
    if (msg.type === "x-fal-error") { state.rtc.errors.push(msg); log(`WebRTC error: ${msg.error} ${msg.reason || ""}`); return; }
    if (msg.type !== "chunk") return;
    Object.assign(state.rtc, { index: msg.index, speaking: msg.speaking, chunks: state.rtc.chunks + 1 });
    if (msg.interrupted) state.rtc.interrupted += 1;
  }
  async speak() {
    const pcm = wavPcm16(await (await fetch(config.sample_speech)).arrayBuffer());
    const step = 1280;  // 40 ms of PCM16 at 16 kHz
    let at = 0;
    clearInterval(this.timer);
    this.send({ type: "speaking" });
    const t0 = performance.now();
    state.rtc.latency_ms = null;
    this.watchLatency(t0);
    const push = () => {
      if (at >= pcm.length) { clearInterval(this.timer); this.send({ type: "end_of_speech" }); return; }
      this.send({ type: "audio", pcm: pcm.slice(at, at + step) });
      at += step;
    };
    push();
    this.timer = setInterval(push, 40);
    log("speaking the sample WAV over the data channel");
  }
  async watchLatency(t0) {
    // First PCM chunk sent -> the audio track plays speech here (getStats audioLevel), A/V in sync.
    const deadline = t0 + 5000;
    while (performance.now() < deadline && state.rtc.latency_ms === null) {
      if ((await this.audioStats()).audioLevel > 0.01) {
        state.rtc.latency_ms = Math.round(performance.now() - t0);
        $("rtc-latency").textContent = `speech audible ${state.rtc.latency_ms} ms after its first PCM chunk`;
        return;
      }
      await new Promise((ok) => setTimeout(ok, 10));
    }
  }
  async audioStats() {
    const stats = await this.pc.getStats();
    for (const s of stats.values()) if (s.type === "inbound-rtp" && s.kind === "audio") return s;
    return {};
  }
  listen() { clearInterval(this.timer); this.send({ type: "listening" }); log("listening pose"); }
  interrupt() { clearInterval(this.timer); this.send({ type: "interrupt" }); log("interrupted"); }
  async stop() {
    clearInterval(this.timer);
    if (this.location) await fetch(this.location, { method: "DELETE", headers: authHeaders() });
    this.pc.close();
    setRtc(false);
    log("WebRTC session ended");
  }
}

function setRtc(on) {
  $("rtc-start").disabled = on;
  for (const id of ["rtc-speak", "rtc-listen", "rtc-interrupt", "rtc-stop"]) $(id).disabled = !on;
}

// --- wiring -----------------------------------------------------------------------------------
async function main() {
  config = await (await fetch("/playground/config.json")).json();
  for (const v of config.voices) $("voice").add(new Option(v, v, v === config.default_voice, v === config.default_voice));
  $("portrait-preview").src = config.sample_portrait;
  document.querySelectorAll("input[name=portrait]").forEach((el) => el.addEventListener("change", () => { portraitUrl = null; }));
  $("portrait-file").addEventListener("change", () => {
    document.querySelector("input[value=upload]").checked = true;
    portraitUrl = null;
  });
  $("generate").addEventListener("click", generate);
  let live = null;
  $("live-start").addEventListener("click", async () => {
    live = new LiveDemo();
    try { await live.start(); } catch (err) { log(`live error: ${err.message}`); }
  });
  $("live-speak").addEventListener("click", () => live.speak());
  $("live-interrupt").addEventListener("click", () => live.interrupt());
  $("live-stop").addEventListener("click", () => live.stop());
  let rtc = null;
  $("rtc-start").addEventListener("click", async () => {
    rtc = new RtcDemo();
    window.playground.rtcDemo = rtc;  // the browser test reads its getStats
    try { await rtc.start(); } catch (err) { log(`WebRTC error: ${err.message}`); state.rtc.errors.push(err.message); }
  });
  $("rtc-speak").addEventListener("click", () => rtc.speak());
  $("rtc-listen").addEventListener("click", () => rtc.listen());
  $("rtc-interrupt").addEventListener("click", () => rtc.interrupt());
  $("rtc-stop").addEventListener("click", () => rtc.stop());
  state.ready = true;
}

main().catch((err) => log(`error: ${err.message}`));
