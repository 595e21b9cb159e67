// Minimal MessagePack (the subset the realtime socket uses: nil, bool, int, float, str, bin,
// array, map). Plain ES module, no build step.

const enc = new TextEncoder();
const dec = new TextDecoder();

class Writer {
  constructor() { this.buf = new Uint8Array(256); this.view = new DataView(this.buf.buffer); this.n = 0; }
  room(k) {
    if (this.n + k <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.n + k));
    next.set(this.buf.subarray(0, this.n));
    this.buf = next; this.view = new DataView(next.buffer);
  }
  u8(v) { this.room(1); this.view.setUint8(this.n, v); this.n += 1; }
  u16(v) { this.room(2); this.view.setUint16(this.n, v); this.n += 2; }
  u32(v) { this.room(4); this.view.setUint32(this.n, v); this.n += 4; }
  f64(v) { this.room(8); this.view.setFloat64(this.n, v); this.n += 8; }
  bytes(b) { this.room(b.length); this.buf.set(b, this.n); this.n += b.length; }
  head(len, fix, fixMax, c8, c16, c32) {
    if (fix !== null && len <= fixMax) this.u8(fix | len);
    else if (c8 !== null && len < 0x100) { this.u8(c8); this.u8(len); }
    else if (len < 0x10000) { this.u8(c16); this.u16(len); }
    else { this.u8(c32); this.u32(len); }
  }
}

function write(w, v) {
  if (v === null || v === undefined) w.u8(0xc0);
  else if (v === true || v === false) w.u8(v ? 0xc3 : 0xc2);
  else if (typeof v === "number") writeNumber(w, v);
  else if (typeof v === "string") { const b = enc.encode(v); w.head(b.length, 0xa0, 31, 0xd9, 0xda, 0xdb); w.bytes(b); }
  else if (v instanceof ArrayBuffer || ArrayBuffer.isView(v)) {
    const b = v instanceof ArrayBuffer ? new Uint8Array(v) : new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
    w.head(b.length, null, 0, 0xc4, 0xc5, 0xc6); w.bytes(b);
  } else if (Array.isArray(v)) { w.head(v.length, 0x90, 15, null, 0xdc, 0xdd); v.forEach((x) => write(w, x)); }
  else {
    const keys = Object.keys(v).filter((k) => v[k] !== undefined);
    w.head(keys.length, 0x80, 15, null, 0xde, 0xdf);
    keys.forEach((k) => { write(w, k); write(w, v[k]); });
  }
}

function writeNumber(w, v) {
  if (!Number.isInteger(v) || Math.abs(v) > 0xffffffff) { w.u8(0xcb); w.f64(v); }
  else if (v >= 0 && v < 128) w.u8(v);
  else if (v < 0 && v >= -32) w.u8(v & 0xff);
  else if (v >= 0) { w.u8(0xce); w.u32(v); }
  else if (v >= -0x80000000) { w.u8(0xd2); w.room(4); w.view.setInt32(w.n, v); w.n += 4; }
  else { w.u8(0xcb); w.f64(v); }
}

export function encode(value) {
  const w = new Writer();
  write(w, value);
  return w.buf.slice(0, w.n);
}

export function decode(data) {
  const b = data instanceof Uint8Array ? data : new Uint8Array(data);
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let p = 0;
  const take = (n) => { const out = b.subarray(p, p + n); p += n; return out; };
  const str = (n) => dec.decode(take(n));
  const arr = (n) => Array.from({ length: n }, () => read());
  const map = (n) => { const o = {}; for (let i = 0; i < n; i++) { const k = read(); o[k] = read(); } return o; };
  const num = (get, size) => { const v = view[get](p); p += size; return v; };
  function read() {
    const t = b[p++];
    if (t < 0x80) return t;
    if (t >= 0xe0) return t - 0x100;
    if ((t & 0xf0) === 0x80) return map(t & 0x0f);
    if ((t & 0xf0) === 0x90) return arr(t & 0x0f);
    if ((t & 0xe0) === 0xa0) return str(t & 0x1f);
    switch (t) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return take(num("getUint8", 1)).slice();
      case 0xc5: return take(num("getUint16", 2)).slice();
      case 0xc6: return take(num("getUint32", 4)).slice();
      case 0xca: return num("getFloat32", 4);
      case 0xcb: return num("getFloat64", 8);
      case 0xcc: return num("getUint8", 1);
      case 0xcd: return num("getUint16", 2);
      case 0xce: return num("getUint32", 4);
      case 0xcf: return Number(num("getBigUint64", 8));
      case 0xd0: return num("getInt8", 1);
      case 0xd1: return num("getInt16", 2);
      case 0xd2: return num("getInt32", 4);
      case 0xd3: return Number(num("getBigInt64", 8));
      case 0xd9: return str(num("getUint8", 1));
      case 0xda: return str(num("getUint16", 2));
      case 0xdb: return str(num("getUint32", 4));
      case 0xdc: return arr(num("getUint16", 2));
      case 0xdd: return arr(num("getUint32", 4));
      case 0xde: return map(num("getUint16", 2));
      case 0xdf: return map(num("getUint32", 4));
      default: throw new Error(`msgpack: unsupported type 0x${t.toString(16)}`);
    }
  }
  return read();
}
