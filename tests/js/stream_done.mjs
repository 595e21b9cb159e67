// fal.stream against a local flashhead server: iterate the chunk events, then done().
// env: FLASHHEAD_URL, FAL_KEY, PORTRAIT (path). Prints one JSON line with what it saw.
import { readFileSync } from "node:fs";
import { fal } from "@fal-ai/client";

const base = process.env.FLASHHEAD_URL;
const redirect = (url) => url.replace(/^https:\/\/(fal\.run|rest\.fal\.ai)/, (m, host) => (host === "fal.run" ? base : `${base}/rest`));
fal.config({ credentials: process.env.FAL_KEY, fetch: (url, init) => fetch(redirect(String(url)), init) });

const image = `data:image/png;base64,${readFileSync(process.env.PORTRAIT).toString("base64")}`;
const stream = await fal.stream("fal-ai/flashhead", {
  input: { image_url: image, text: "A short sentence streamed to a Node client, chunk by chunk.", seed: 5 },
});
let chunks = 0, lastIndex = -1, lastEvent = null;
for await (const event of stream) {
  lastEvent = event;
  if (event.type === "chunk") { chunks += event.duration > 0 ? 1 : 0; lastIndex = event.duration > 0 ? event.index : lastIndex; }
}
const final = await stream.done();
console.log(JSON.stringify({ chunks, last_index: lastIndex, final, last_event: lastEvent }));
