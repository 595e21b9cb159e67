"""Fetch the bytes behind an input reference: an http(s) URL, a data: URI or (CLI only) a path.

URLs go through the SSRF guard (flashhead.media.urlguard) on every redirect hop, and the
connection is made to the very address that was checked, so a DNS answer that changes between
the check and the connect (DNS rebinding) cannot point the fetch somewhere else.
"""
from __future__ import annotations

import base64
import binascii
import mimetypes
import time
from pathlib import Path
from urllib.parse import unquote, unquote_to_bytes, urljoin, urlsplit

import httpx

from flashhead.errors import FetchError, InputError, LimitExceeded
from flashhead.media.urlguard import Allow, IPAddress, guard_url, parse_allow, url_scheme

MAX_REDIRECTS = 5
USER_AGENT = "flashhead-fetch/1.0"
REDIRECT_CODES = (301, 302, 303, 307, 308)


def fetch(
    ref: str,
    *,
    field: str,
    max_bytes: int,
    timeout: float,
    allow: str = "",
    allow_paths: bool = False,
) -> tuple[bytes, str | None]:
    """Return (data, content_type) for `ref`; errors name `field`.

    allow: SSRF exceptions (comma-separated hostnames, IPs, CIDRs).
    allow_paths: accept local file paths (the CLI does, the server must not).
    """
    ref = ref.strip()
    scheme = url_scheme(ref)
    if scheme == "data":
        data, ctype = decode_data_uri(ref, field=field, max_bytes=max_bytes)
    elif scheme in ("http", "https"):
        data, ctype = fetch_url(ref, field=field, max_bytes=max_bytes, timeout=timeout, allow=allow)
    elif allow_paths and (scheme in ("", "file") or len(scheme) == 1):  # len 1: a Windows drive
        data, ctype = read_path(ref, field=field, max_bytes=max_bytes)
    else:
        raise InputError("must be an http(s) URL or a data: URI", field=field)
    if not data:
        raise InputError("the referenced file is empty", field=field)
    return data, ctype


def decode_data_uri(uri: str, *, field: str, max_bytes: int) -> tuple[bytes, str | None]:
    """Decode `data:[<mime>][;params][;base64],<payload>` (RFC 2397)."""
    header, comma, payload = uri[len("data:"):].partition(",")
    if not comma:
        raise InputError("malformed data URI: no ',' before the payload", field=field)
    params = [p.strip() for p in header.split(";")]
    mime = params[0].lower() if "/" in params[0] else None
    if params[-1].lower() == "base64":
        text = "".join((unquote(payload) if "%" in payload else payload).split())
        if len(text) // 4 * 3 > max_bytes + 3:
            raise LimitExceeded(f"data URI holds more than {max_bytes} bytes", field=field)
        data = _b64decode(text, field)
    else:
        if len(payload) > 3 * max_bytes + 3:  # '%xx' is the longest form of one byte
            raise LimitExceeded(f"data URI holds more than {max_bytes} bytes", field=field)
        data = unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise LimitExceeded(f"data URI holds {len(data)} bytes; the limit is {max_bytes}", field=field)
    return data, mime


def _b64decode(text: str, field: str) -> bytes:
    altchars = b"-_" if ("-" in text or "_" in text) else None  # base64url, as some clients send
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("data URI holds invalid base64", field=field) from None


def read_path(ref: str, *, field: str, max_bytes: int) -> tuple[bytes, str | None]:
    path = Path(unquote(urlsplit(ref).path) if ref.lower().startswith("file:") else ref).expanduser()
    if not path.is_file():
        raise InputError(f"file not found: {path}", field=field)
    size = path.stat().st_size
    if size > max_bytes:
        raise LimitExceeded(f"{path} is {size} bytes; the limit is {max_bytes}", field=field)
    return path.read_bytes(), mimetypes.guess_type(path.name)[0]


def fetch_url(
    url: str, *, field: str, max_bytes: int, timeout: float, allow: str | Allow = ""
) -> tuple[bytes, str | None]:
    """GET `url`, following at most MAX_REDIRECTS redirects, each hop checked by the guard."""
    allow = parse_allow(allow) if isinstance(allow, str) else allow
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            ips = guard_url(url, allow, field=field)
            response = _send_pinned(client, url, ips, deadline, field)
            try:
                if response.status_code in REDIRECT_CODES and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                return _read_body(response, deadline, field, max_bytes, timeout), _mime(response)
            finally:
                response.close()
    raise FetchError(f"more than {MAX_REDIRECTS} redirects", field=field)


def _pinned_request(client: httpx.Client, url: str, ip: IPAddress, remaining: float) -> httpx.Request:
    """A request to `url` that connects to `ip` but keeps the Host header and TLS name."""
    original = httpx.URL(url)
    headers = {"Host": original.netloc.decode("ascii"), "User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    extensions = {"timeout": httpx.Timeout(remaining).as_dict()}
    if original.scheme == "https":
        extensions["sni_hostname"] = original.host
    return client.build_request(
        "GET", original.copy_with(host=str(ip)), headers=headers, extensions=extensions
    )


def _send_pinned(
    client: httpx.Client, url: str, ips: list[IPAddress], deadline: float, field: str
) -> httpx.Response:
    error: Exception | None = None
    for ip in ips:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            return client.send(_pinned_request(client, url, ip, remaining), stream=True)
        except httpx.ConnectError as exc:  # try the host's next address
            error = exc
        except httpx.TimeoutException:
            break
        except httpx.HTTPError as exc:
            raise FetchError(f"could not fetch {_shown(url)}: {exc}", field=field) from None
    if error is not None and time.monotonic() < deadline:
        raise FetchError(f"could not connect to {_shown(url)}: {error}", field=field) from None
    raise FetchError(f"fetching {_shown(url)} timed out", field=field)


def _read_body(
    response: httpx.Response, deadline: float, field: str, max_bytes: int, timeout: float
) -> bytes:
    shown = _shown(str(response.request.headers.get("host", "")))
    if not 200 <= response.status_code < 300:
        raise FetchError(f"the server answered HTTP {response.status_code}", field=field)
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise LimitExceeded(f"the file is {length} bytes; the limit is {max_bytes}", field=field)
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):   # asked for identity: a compressed body could be a bomb
        raise FetchError(f"the server sent a {encoding[:20]}-encoded body; media are fetched uncompressed",
                         field=field)
    body = bytearray()
    try:
        for piece in response.iter_raw():
            body += piece
            if len(body) > max_bytes:
                raise LimitExceeded(f"the file is larger than {max_bytes} bytes", field=field)
            if time.monotonic() > deadline:
                raise FetchError(f"fetching from {shown} took longer than {timeout:g} s", field=field)
    except httpx.TimeoutException:
        raise FetchError(f"fetching from {shown} took longer than {timeout:g} s", field=field) from None
    except httpx.HTTPError as exc:
        raise FetchError(f"download from {shown} failed: {exc}", field=field) from None
    return bytes(body)


def _mime(response: httpx.Response) -> str | None:
    value = response.headers.get("content-type", "").split(";")[0].strip().lower()
    return value or None


def _shown(url: str) -> str:
    """A URL cut short for error messages (data and queries can be long or secret)."""
    return url.split("?")[0][:200]
