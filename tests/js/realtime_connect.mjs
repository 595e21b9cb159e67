// fal.realtime.connect with a global WebSocket override pointing at a local flashhead server:
// a unary request (chunks, then the final output) and a live session (start, audio, end).
// env: FLASHHEAD_URL, FAL_KEY, PORTRAIT, SPEECH (PCM16 16 kHz WAV). Run with --experimental-websocket.
import { readFileSync } from "node:fs";
import { fal } from "@fal-ai/client";

const base = process.env.FLASHHEAD_URL;
const wsBase = base.replace(/^http/, "ws");
const NativeWebSocket = globalThis.WebSocket;
globalThis.WebSocket = class extends NativeWebSocket {
  constructor(url, protocols) { super(String(url).replace("wss://fal.run", wsBase), protocols); }
};
const redirect = (url) => url.replace("https://rest.fal.ai", `${base}/rest`).replace("https://fal.run", base);
fal.config({ credentials: process.env.FAL_KEY, fetch: (url, init) => fetch(redirect(String(url)), init) });

const image = `data:image/png;base64,${readFileSync(process.env.PORTRAIT).toString("base64")}`;
const seen = { unary_chunks: 0, final: null, started: null, live_chunks: 0, speaking: 0, stopped: null, errors: [] };
const finished = {};
const waitFor = (name) => new Promise((ok) => { finished[name] = ok; });

const conn = fal.realtime.connect("fal-ai/flashhead", {
  throttleInterval: 0,  // audio packets must not be coalesced
  onResult(msg) {
    if (msg.type === "chunk" && !seen.started) seen.unary_chunks += 1;
    else if (msg.video && !seen.started) { seen.final = msg; finished.unary?.(); }
    else if (msg.type === "started") seen.started = { mime: msg.mime, init: msg.init_segment.length };
    else if (msg.type === "chunk") {
      seen.live_chunks += 1;
      if (msg.speaking) seen.speaking += 1;
      if (seen.speaking > 0 && !msg.speaking) finished.spoken?.();
    } else if (msg.type === "stopped") { seen.stopped = msg; finished.stopped?.(); }
  },
  onError(err) { seen.errors.push(String(err.message || err)); },
});

const timeout = setTimeout(() => { console.log(JSON.stringify(seen)); process.exit(2); }, 200_000);
const unary = waitFor("unary");
conn.send({ image_url: image, text: "Hello from the realtime socket.", seed: 3 });
await unary;

const spoken = waitFor("spoken");
conn.send({ type: "start", image_url: image, pace: false });
const wav = readFileSync(process.env.SPEECH);
const pcm = wav.subarray(44, 44 + 16000 * 2 * 2);   // 2 s of the sample
for (let at = 0; at < pcm.length; at += 1280) conn.send({ type: "audio", pcm: new Uint8Array(pcm.subarray(at, at + 1280)) });
conn.send({ type: "end_of_speech" });
await spoken;
const stopped = waitFor("stopped");
conn.send({ type: "stop" });
await stopped;
clearTimeout(timeout);
conn.close();
console.log(JSON.stringify(seen));
process.exit(0);
