"""Point the unmodified official Python client (fal-client) at a flashhead server.

    from flashhead.client import configure_fal_client
    configure_fal_client("https://127.0.0.1:8000")
    fal_client.subscribe("fal-ai/flashhead", {...})

fal-client reads FAL_RUN_HOST / FAL_QUEUE_RUN_HOST once, at import, and hard-codes https/wss,
so this sets the environment (for processes started later) and reassigns the module-level URL
formats of the already imported client (RUN_URL_FORMAT, QUEUE_URL_FORMAT, REALTIME_URL_FORMAT,
REST_URL, CDN_URL), which also makes plain http:// servers work.
"""
from __future__ import annotations

import os
from urllib.parse import urlsplit


def fal_urls(base_url: str) -> dict[str, str]:
    """The five URL roots fal-client uses, for a flashhead server at `base_url`."""
    parts = urlsplit(base_url.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base_url must be http(s)://host[:port][/prefix], got {base_url!r}")
    root = f"{parts.netloc}{parts.path}"
    ws = "wss" if parts.scheme == "https" else "ws"
    return {"RUN_URL_FORMAT": f"{parts.scheme}://{root}/",
            "QUEUE_URL_FORMAT": f"{parts.scheme}://{root}/queue/",
            "REALTIME_URL_FORMAT": f"{ws}://{root}/",
            "REST_URL": f"{parts.scheme}://{root}/rest",
            "CDN_URL": f"{parts.scheme}://{root}/cdn",
            "FAL_RUN_HOST": root, "FAL_QUEUE_RUN_HOST": f"{root}/queue"}


def configure_fal_client(base_url: str) -> dict[str, str]:
    """Make fal_client talk to `base_url`; returns the URLs it set."""
    urls = fal_urls(base_url)
    os.environ["FAL_RUN_HOST"] = urls["FAL_RUN_HOST"]
    os.environ["FAL_QUEUE_RUN_HOST"] = urls["FAL_QUEUE_RUN_HOST"]
    import fal_client.client as fc

    for name in ("RUN_URL_FORMAT", "QUEUE_URL_FORMAT", "REALTIME_URL_FORMAT", "REST_URL", "CDN_URL"):
        setattr(fc, name, urls[name])
    return urls
