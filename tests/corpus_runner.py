"""Runs tests/corpus/*.jsonl cases against a real server (see tests/corpus/README.md)."""
from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

CORPUS = Path(__file__).resolve().parent / "corpus"
# What an answer to a hostile input must never contain.
LEAKS = re.compile(r"Traceback|File \"/|/tmp/|/work/|/home/|/root/|flashhead-data|No such file or directory|"
                   r"Permission denied|\.py\b|errno", re.I)


def load_cases() -> list[dict]:
    cases = []
    for path in sorted(CORPUS.glob("*.jsonl")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("//"):
                case = json.loads(line)
                case["_source"] = f"{path.name}:{n}"
                cases.append(case)
    ids = [c["id"] for c in cases]
    dupes = {i for i in ids if ids.count(i) > 1}
    assert not dupes, f"duplicate corpus ids: {sorted(dupes)}"
    return cases


UPLOAD_KEY = "corpusUploadTarget0123456789abcd.png"   # the storage key the `upload*` tokens name


def token_modes(data_dir: Path, key: str, revoked: str) -> dict:
    """`auth` modes that send a token as `Authorization: Bearer ...` (see README), minted with the
    token secret the server on `data_dir` will use, the way an attacker holding it could."""
    import jwt

    from flashhead.api.auth import SqliteKeyStore, token_secret

    secret = token_secret(None, SqliteKeyStore(data_dir), data_dir)
    live, dead, now = key.split(":")[0], revoked.split(":")[0], int(time.time())

    def mint(typ: str, sub: str = live, exp: int = 300, signer: bytes = secret, **extra) -> str:
        claims = {"typ": typ, "sub": sub, "iat": now, "exp": now + exp, **extra}
        return "Bearer " + jwt.encode(claims, signer, algorithm="HS256")

    upload = {"key": UPLOAD_KEY, "ct": "image/png", "name": "a.png"}
    unsigned = jwt.encode({"typ": "cdn", "sub": live, "iat": now, "exp": now + 300}, None, algorithm="none")
    return {"cdn": mint("cdn"), "cdn-revoked": mint("cdn", sub=dead), "cdn-expired": mint("cdn", exp=-60),
            "cdn-forged": mint("cdn", signer=b"x" * 32), "cdn-alg-none": "Bearer " + unsigned,
            "cdn-no-sub": "Bearer " + jwt.encode({"typ": "cdn", "exp": now + 300}, secret, algorithm="HS256"),
            "realtime": mint("realtime", apps=["flashhead"]), "upload": mint("upload", **upload),
            "upload-revoked": mint("upload", sub=dead, **upload),
            "upload-other-file": mint("upload", **{**upload, "key": "someOtherFile0123456789abcdefghi.png"})}


def raw_bytes(spec: dict) -> bytes:
    if "b64" in spec:
        return base64.b64decode(spec["b64"])
    return spec.get("text", "").encode()


@dataclass
class Runner:
    """One server, its keys and the sample portrait."""

    client: httpx.Client
    keys: dict              # auth mode -> Authorization header value (None: no header)
    portrait_uri: str

    def upload(self, mime: str, data: bytes, name: str | None) -> str:
        headers = {"Authorization": self.keys["key"], "Content-Type": mime}
        if name:
            headers["X-Fal-File-Name"] = name
        r = self.client.post("/cdn/files/upload", content=data, headers=headers)
        assert r.status_code == 200, f"corpus upload failed: {r.status_code} {r.text[:300]}"
        return r.json()["access_url"]

    def materialize(self, value):
        if isinstance(value, list):
            return [self.materialize(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "$portrait" in value:
            return self.portrait_uri
        if "$data" in value:
            return f"data:{value['$data']};base64,{base64.b64encode(raw_bytes(value)).decode()}"
        if "$own" in value:
            return str(self.client.base_url).rstrip("/") + value["$own"]
        if "$upload" in value:
            return self.upload(value["$upload"], raw_bytes(value), value.get("name"))
        if "$token" in value:
            return self.keys[value["$token"]].removeprefix("Bearer ")
        return {k: self.materialize(v) for k, v in value.items()}

    def send(self, case: dict) -> httpx.Response:
        headers = dict(case.get("headers", {}))
        auth = self.keys[case.get("auth", "key")]
        if auth is not None:
            headers.setdefault("Authorization", auth)
        kw: dict = {"headers": headers, "params": self.materialize(case.get("query"))}
        if "json" in case:
            kw["content"] = json.dumps(self.materialize(case["json"])).encode()
            headers.setdefault("Content-Type", "application/json")
        elif "text" in case or "b64" in case:
            kw["content"] = raw_bytes(case)
        return self.client.request(case.get("method", "POST"), case["path"], **kw)

    def check(self, case: dict) -> None:
        r = self.send(case)
        expect = case["expect"]
        where = f"{case['id']} ({case['_source']}): {case.get('why', '')}"
        assert r.status_code < 500, f"{where}: server error {r.status_code}: {r.text[:500]}"
        assert r.status_code == expect["status"], f"{where}: got {r.status_code}: {r.text[:500]}"
        assert not LEAKS.search(r.text), f"{where}: the answer leaks server details: {r.text[:500]}"
        if expect.get("field"):
            assert names_field(r, expect["field"]), f"{where}: the error does not name {expect['field']}: {r.text[:500]}"
        if "put" in case:                   # the JS client's flow: PUT the bytes to the signed URL
            put = self.client.put(r.json()["upload_url"], content=raw_bytes(case["put"]))
            assert put.status_code == 200, f"{where}: the signed PUT gave {put.status_code}: {put.text[:300]}"
        if expect.get("served"):
            body = r.json()
            self.check_served(body.get("access_url") or body["file_url"], expect["served"], where)

    def check_served(self, url: str, want: dict, where: str) -> None:
        r = self.client.get(url)
        assert r.status_code == 200, f"{where}: fetching the stored file gave {r.status_code}"
        got_type = r.headers.get("content-type", "").split(";")[0].strip()
        if "content_type" in want:
            assert got_type == want["content_type"], f"{where}: served as {got_type!r}"
        if "disposition" in want:
            disposition = r.headers.get("content-disposition", "")
            assert disposition.startswith(want["disposition"]), f"{where}: disposition {disposition!r}"
        assert r.headers.get("x-content-type-options") == "nosniff", f"{where}: no nosniff"
        csp = r.headers.get("content-security-policy", "")
        assert "default-src 'none'" in csp and "sandbox" in csp, f"{where}: CSP {csp!r}"


def names_field(r: httpx.Response, field: str) -> bool:
    try:
        body = r.json()
    except ValueError:
        return False
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        return any(field in map(str, d.get("loc", [])) or field in str(d.get("msg", "")) for d in detail)
    return field in str(detail) or field == body.get("field")
