"""fetch(): data URIs, paths, a real HTTP server on loopback, limits, and the SSRF guard.

The guard tests check decisions only: any connection to a non-loopback address fails the test.
"""
from __future__ import annotations

import base64
import gzip
import ipaddress
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from flashhead.errors import FetchError, InputError, LimitExceeded, UnsafeURLError
from flashhead.media.fetch import MAX_REDIRECTS, fetch
from flashhead.media.urlguard import check_address, guard_url

LOOPBACK = "127.0.0.1"
BODY = bytes(range(256)) * 8  # 2048 bytes


class Handler(BaseHTTPRequestHandler):
    hosts_seen: list[str] = []
    encodings_asked: list[str] = []

    def log_message(self, *args):  # keep pytest output quiet
        pass

    def do_GET(self):
        Handler.hosts_seen.append(self.headers.get("Host", ""))
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        route = getattr(self, "route_" + parts.path.strip("/").split("/")[0], None)
        if route is None:
            self.send_error(404)
        else:
            route(parts.path, query)

    def _send(self, body: bytes, ctype="application/octet-stream", length=True):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def route_file(self, path, query):
        self._send(BODY, "image/png; charset=binary")

    def route_gzip(self, path, query):
        Handler.encodings_asked.append(self.headers.get("Accept-Encoding", ""))
        body = gzip.compress(b"\0" * (8 << 20))          # 8 MiB of zeros in about 8 KiB
        self.send_response(200)
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def route_unsized(self, path, query):
        self.close_connection = True  # body ends when the connection closes
        self._send(BODY, length=False)

    def route_slow(self, path, query):
        time.sleep(float(query.get("s", "2")))
        try:
            self._send(BODY)
        except OSError:
            pass

    def route_drip(self, path, query):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        try:
            for i in range(0, len(BODY), 64):
                self.wfile.write(BODY[i:i + 64])
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass

    def route_redirect(self, path, query):
        self.send_response(int(query.get("code", "302")))
        self.send_header("Location", query["to"])
        self.send_header("Content-Length", "0")
        self.end_headers()

    def route_chain(self, path, query):
        n = int(path.rsplit("/", 1)[1])
        if n == 0:
            return self._send(BODY)
        self.send_response(302)
        self.send_header("Location", f"/chain/{n - 1}")  # relative on purpose
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://{LOOPBACK}:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def connections(monkeypatch):
    """Record every outgoing connection; any target outside loopback fails the test."""
    seen: list[str] = []
    real_create = socket.create_connection
    real_connect = socket.socket.connect

    def check(host):
        seen.append(host)
        if not ipaddress.ip_address(host).is_loopback:
            pytest.fail(f"a connection to {host} was attempted")

    def create_connection(address, *args, **kwargs):
        check(address[0])
        return real_create(address, *args, **kwargs)

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            check(address[0])
        return real_connect(self, address)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


def get(url, **kw):
    kw.setdefault("allow", LOOPBACK)
    return fetch(url, field="image_url", max_bytes=kw.pop("max_bytes", 10_000),
                 timeout=kw.pop("timeout", 5.0), **kw)


# --- data URIs and paths -------------------------------------------------------------------

def test_data_uri_base64():
    uri = "data:image/png;base64," + base64.b64encode(BODY).decode()
    assert get(uri) == (BODY, "image/png")


def test_data_uri_base64url_without_padding_and_whitespace():
    text = base64.urlsafe_b64encode(BODY[:200]).decode().rstrip("=")
    uri = "data:audio/wav;base64," + text[:50] + "\n " + text[50:]
    assert get(uri)[0] == BODY[:200]


def test_data_uri_percent_encoded():
    assert get("data:text/plain,hello%20world%00%FF") == (b"hello world\x00\xff", "text/plain")
    assert get("data:,plain")[1] is None


@pytest.mark.parametrize("uri, error", [
    ("data:image/png;base64", InputError),            # no comma
    ("data:image/png;base64,@@@@", InputError),       # not base64
    ("data:image/png;base64,", InputError),           # empty
    ("data:;base64," + "A" * 40_000, LimitExceeded),  # 30 000 bytes > 10 000
    ("data:," + "a" * 10_001, LimitExceeded),
])
def test_bad_data_uris(uri, error):
    with pytest.raises(error) as exc:
        get(uri)
    assert exc.value.field == "image_url"


def test_paths_only_when_allowed(portrait_path):
    data, ctype = get(str(portrait_path), allow_paths=True, max_bytes=10**7)
    assert data == portrait_path.read_bytes() and ctype == "image/png"
    assert get(portrait_path.as_uri(), allow_paths=True, max_bytes=10**7)[0] == data
    for ref in (str(portrait_path), portrait_path.as_uri()):
        with pytest.raises(InputError, match="http"):
            get(ref)


def test_path_errors(tmp_path, portrait_path):
    with pytest.raises(InputError, match="not found"):
        get(str(tmp_path / "missing.png"), allow_paths=True)
    with pytest.raises(LimitExceeded):
        get(str(portrait_path), allow_paths=True, max_bytes=1000)


def test_other_schemes_refused():
    for ref in ("ftp://example.com/a.png", "gopher://example.com/", "javascript:alert(1)"):
        with pytest.raises(InputError):
            get(ref)


# --- a real HTTP server on loopback --------------------------------------------------------

def test_http_fetch(server, connections):
    assert get(server + "/file") == (BODY, "image/png")
    assert connections and set(connections) == {LOOPBACK}


def test_http_without_content_length(server, connections):
    assert get(server + "/unsized")[0] == BODY
    with pytest.raises(LimitExceeded, match="larger than 1000"):
        get(server + "/unsized", max_bytes=1000)


def test_compressed_bodies_are_refused_not_inflated(server, connections):
    """A gzip bomb: we ask for identity, and a server that compresses anyway is refused before
    any byte is inflated (8 MiB here from 8 KiB on the wire, under a 100 000-byte limit)."""
    with pytest.raises(FetchError, match="gzip-encoded") as exc:
        get(server + "/gzip", max_bytes=100_000)
    assert exc.value.field == "image_url"
    assert Handler.encodings_asked[-1] == "identity"


def test_content_length_over_limit(server, connections):
    with pytest.raises(LimitExceeded) as exc:
        get(server + "/file", max_bytes=1000)
    assert exc.value.field == "image_url" and "2048" in exc.value.message


def test_http_error_status(server, connections):
    with pytest.raises(FetchError) as exc:
        get(server + "/nothing-here")
    assert exc.value.field == "image_url" and "404" in exc.value.message


def test_timeout_while_waiting(server, connections):
    start = time.monotonic()
    with pytest.raises(FetchError, match="timed out|longer than"):
        get(server + "/slow?s=3", timeout=0.5)
    assert time.monotonic() - start < 2.5


def test_total_time_limit_while_dripping(server, connections):
    """Each read is quick, but the whole body takes 3 s: the total limit still applies."""
    with pytest.raises(FetchError, match="longer than"):
        get(server + "/drip", timeout=0.8)


def test_connection_refused(connections):
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(FetchError):
        get(f"http://{LOOPBACK}:{port}/")


def test_redirects_followed_and_rechecked(server, connections):
    assert get(server + "/chain/3")[0] == BODY
    assert get(server + f"/redirect?to={server}/file&code=307")[0] == BODY
    with pytest.raises(FetchError, match="redirects"):
        get(server + f"/chain/{MAX_REDIRECTS + 1}")


@pytest.mark.parametrize("target", [
    "http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/", "http://[::1]/",
    "http://127.0.0.2/", "file:///etc/passwd", "http://metadata.google.internal/",
])
def test_redirect_to_unsafe_target_refused_without_connecting(server, connections, target):
    with pytest.raises(UnsafeURLError) as exc:
        get(server + f"/redirect?to={target}")
    assert exc.value.field == "image_url"
    assert set(connections) == {LOOPBACK}


def test_connects_to_the_checked_address(server, connections, monkeypatch):
    """The name is resolved once per hop, the checked IP is dialled, the Host header is kept."""
    port = urlsplit(server).port
    calls = []
    real_getaddrinfo = socket.getaddrinfo

    def fake_getaddrinfo(host, *args, **kwargs):
        if host != "media.test":  # the IP literal the connection is made to
            return real_getaddrinfo(host, *args, **kwargs)
        calls.append(host)
        # A rebinding DNS server would answer something else the second time.
        ip = LOOPBACK if len(calls) == 1 else "10.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    Handler.hosts_seen.clear()
    assert get(f"http://media.test:{port}/file")[0] == BODY
    assert calls == ["media.test"]
    assert Handler.hosts_seen == [f"media.test:{port}"]


# --- the guard's decisions (no connections) --------------------------------------------------

REFUSED = [
    "http://127.0.0.1/", "http://127.5.5.5:8080/", "http://[::1]/", "http://localhost/",
    "http://10.1.2.3/", "http://172.16.0.1/", "http://172.31.255.255/", "http://192.168.1.1/",
    "http://169.254.169.254/", "http://169.254.1.1/", "http://[fe80::1]/", "http://[fc00::1]/",
    "http://[fd00:ec2::254]/", "http://100.64.0.1/", "http://100.127.255.254/",
    "http://[::ffff:10.0.0.1]/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:169.254.169.254]/",
    "http://[2002:a00:1::]/", "http://[64:ff9b::a00:1]/", "http://0.0.0.0/", "http://[::]/",
    "http://224.0.0.1/", "http://[ff02::1]/", "http://240.0.0.1/", "http://255.255.255.255/",
    "http://2130706433/", "http://0x7f000001/", "http://metadata.google.internal/",
    "https://192.168.0.10:8443/x",
]


@pytest.mark.parametrize("url", REFUSED)
def test_guard_refuses(url, connections):
    with pytest.raises(UnsafeURLError):
        guard_url(url, "", field="image_url")
    with pytest.raises(UnsafeURLError) as exc:
        get(url, allow="")
    assert exc.value.field == "image_url"
    assert connections == []


@pytest.mark.parametrize("ip, words", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.0.0.1", "private"),
    ("172.16.5.4", "private"), ("192.168.0.1", "private"), ("fc00::1", "private"),
    ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"), ("fe80::1", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("224.0.0.251", "multicast"), ("240.0.0.1", "reserved"), ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "metadata"),
])
def test_check_address_reasons(ip, words):
    reason = check_address(ip)
    assert reason is not None and words in reason


@pytest.mark.parametrize("ip", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8",
                                "100.128.0.1", "172.32.0.1"])
def test_check_address_public(ip):
    assert check_address(ip) is None


def fake_dns(monkeypatch, answers):
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        try:
            ipaddress.ip_address(host)  # the literal a connection is made to: no DNS involved
            return real_getaddrinfo(host, port, *args, **kwargs)
        except ValueError:
            pass
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (ip, port)) for ip in answers[host]]
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_hostname_resolving_to_private_refused(monkeypatch, connections):
    fake_dns(monkeypatch, {"images.example": ["10.9.8.7"],
                           "mixed.example": ["93.184.216.34", "192.168.3.4"],
                           "public.example": ["93.184.216.34", "2606:4700::1"]})
    for host in ("images.example", "mixed.example"):
        with pytest.raises(UnsafeURLError, match="private"):
            get(f"https://{host}/a.png", allow="")
    assert [str(ip) for ip in guard_url("http://public.example/", "")] == ["93.184.216.34", "2606:4700::1"]
    assert connections == []


def test_unresolvable_host(monkeypatch, connections):
    fake_dns(monkeypatch, {})
    with pytest.raises(FetchError, match="resolve"):
        get("http://no-such-host.example/", allow="")


def test_allow_list_opens_exceptions(monkeypatch):
    fake_dns(monkeypatch, {"localhost": ["127.0.0.1"], "nas.lan": ["192.168.1.20"]})
    assert guard_url("http://localhost:8000/", "localhost")
    assert guard_url("http://192.168.1.20/", "192.168.0.0/16")
    assert guard_url("http://nas.lan/", " 192.168.1.20 , other.example")
    assert guard_url("http://[::1]/", "::1")
    with pytest.raises(UnsafeURLError):
        guard_url("http://10.0.0.1/", "192.168.0.0/16,localhost")
    with pytest.raises(UnsafeURLError):
        guard_url("http://nas.lan/", "127.0.0.1")


def test_https_checks_the_certificate_against_the_name_not_the_pinned_ip(monkeypatch, connections):
    """The connection goes to the checked IP, but TLS still verifies the URL's host name."""
    import functools
    import ssl

    import httpx
    import trustme

    ca = trustme.CA()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    httpd.socket = server_ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    monkeypatch.setattr(httpx, "Client", functools.partial(httpx.Client, verify=client_ctx))
    fake_dns(monkeypatch, {"localhost": [LOOPBACK]})
    port = httpd.server_address[1]
    try:
        assert get(f"https://localhost:{port}/file", allow="localhost")[0] == BODY
        with pytest.raises(FetchError, match="certificate"):
            get(f"https://{LOOPBACK}:{port}/file")  # the certificate is for 'localhost' only
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_data_uris_never_go_through_urlsplit_whose_cache_would_keep_them(tmp_path, portrait_path, monkeypatch):
    """Python's urlsplit keeps its last 128 answers (an lru_cache), each holding the URL twice:
    every data: URI an input check, a fetch or localize split stayed in the API's and the
    engine's memory (20 portraits of 4 MB: 163 MB). Long http(s) URLs are refused first."""
    import urllib.parse
    from types import SimpleNamespace

    from flashhead.api import queue
    from flashhead.config import Settings
    from flashhead.media import fetch as fetch_module
    from flashhead.media import urlguard
    from flashhead.storage import localize as localize_module
    from flashhead.storage.local import LocalStorage

    split = []

    def recording(url, *a, **kw):
        split.append(url)
        return urllib.parse.urlsplit(url, *a, **kw)

    for module in (urlguard, fetch_module, localize_module):
        monkeypatch.setattr(module, "urlsplit", recording)
    uri = "data:image/png;base64," + base64.b64encode(portrait_path.read_bytes()).decode()
    storage = LocalStorage(tmp_path / "files")
    ctx = SimpleNamespace(storage=storage, settings=Settings(data_dir=tmp_path))
    queue.check_inputs(ctx, {"image_url": uri, "audio_url": "DATA:audio/wav;base64,UklGRg=="}, "http://127.0.0.1:9")
    assert fetch_module.fetch(uri, field="image_url", max_bytes=10 ** 7, timeout=5)[0] == portrait_path.read_bytes()
    assert localize_module.localize({"image_url": uri}, storage, {"127.0.0.1:9"}, tmp_path) == ({"image_url": uri}, False)
    assert not [u for u in split if "base64" in u], "a data: URI went through urlsplit"
    with pytest.raises(LimitExceeded, match="8192"):
        queue.check_inputs(ctx, {"image_url": "https://example.com/" + "a" * 9000}, "http://127.0.0.1:9")
    urlguard.check_url_length("h" * urlguard.C.MAX_URL_CHARS)             # the limit itself passes
    with pytest.raises(LimitExceeded):
        urlguard.check_url_length("h" * (urlguard.C.MAX_URL_CHARS + 1))
