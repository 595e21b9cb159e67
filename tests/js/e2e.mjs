// The unmodified @fal-ai/client 1.10.1 against a flashhead server.
// Usage: FLASHHEAD_URL=https://127.0.0.1:PORT node e2e.mjs <scenario> ; prints one JSON line.
import { fal, ValidationError, ApiError } from "@fal-ai/client";
import { readFileSync } from "node:fs";

const BASE = process.env.FLASHHEAD_URL;
const HOSTS = [
  ["https://queue.fal.run", `${BASE}/queue`],
  ["https://fal.run", BASE],
  ["https://rest.fal.ai", `${BASE}/rest`],
];

// The documented way to redirect the JS client: a fetch wrapper.
function redirect(input, init) {
  let url = typeof input === "string" ? input : input.url;
  for (const [from, to] of HOSTS) {
    if (url.startsWith(from)) { url = to + url.slice(from.length); break; }
  }
  return fetch(url, init);
}

fal.config({ credentials: process.env.FAL_KEY || "unused:unused", fetch: redirect });

const ENDPOINT = "fal-ai/flashhead";
const TEXT = "Hello there.";
const portrait = () => new Blob([readFileSync(process.env.PORTRAIT)], { type: "image/png" });

const scenarios = {
  async run() {
    const url = await fal.storage.upload(portrait());
    const { data, requestId } = await fal.run(ENDPOINT, { input: { image_url: url, text: TEXT } });
    return { upload_url: url, video: data.video, requestId };
  },
  async subscribe() {
    const statuses = [];
    const { data, requestId } = await fal.subscribe(ENDPOINT, {
      input: { image_url: await fal.storage.upload(portrait()), text: TEXT },
      logs: true,
      mode: process.env.MODE || "polling",
      onQueueUpdate: (u) => statuses.push({ status: u.status, logs: (u.logs || []).length }),
    });
    return { video: data.video, requestId, statuses };
  },
  async queue() {
    const { request_id } = await fal.queue.submit(ENDPOINT, {
      input: { image_url: await fal.storage.upload(portrait()), text: TEXT } });
    let status;
    do {
      status = await fal.queue.status(ENDPOINT, { requestId: request_id, logs: true });
      await new Promise((r) => setTimeout(r, 100));
    } while (status.status !== "COMPLETED");
    const result = await fal.queue.result(ENDPOINT, { requestId: request_id });
    return { request_id, logs: status.logs.length, video: result.data.video, requestId: result.requestId };
  },
  async invalid() {
    try {
      await fal.run(ENDPOINT, { input: { image_url: "data:image/png;base64,AAAA" } });
      return { error: null };
    } catch (e) {
      return { error: e.constructor.name, status: e.status, isValidation: e instanceof ValidationError,
               isApi: e instanceof ApiError, fields: (e.fieldErrors || []).map((f) => f.loc) };
    }
  },
  async multipart() {   // over 90 MB: the client switches to initiate-multipart + parts
    const size = 91 * 1024 * 1024;
    const bytes = new Uint8Array(size);
    for (let i = 0; i < size; i += 4096) bytes[i] = (i / 4096) & 0xff;
    const url = await fal.storage.upload(new Blob([bytes], { type: "application/octet-stream" }));
    return { url, size };
  },
};

const name = process.argv[2];
scenarios[name]().then(
  (out) => { console.log(JSON.stringify(out)); },
  (err) => { console.log(JSON.stringify({ crash: String(err), stack: err.stack, body: err.body })); process.exit(1); },
);
