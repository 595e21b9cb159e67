"""The render engine: one process per device owns the renderer and serves every real-time
session (/stream requests, realtime unary requests and live sessions) from one scheduler.

    sessions.py   what one session does per step (a stream chunk, a live chunk)
    scheduler.py  deadline-first steps over every active session on a few render threads
    process.py    the engine's message loop (child side) and its supervisor (API side)
    pool.py       the CPU engine: a router in front of one render process (an engine loop) per core
    relay.py      the API side of the pipe: per-session channels for async routes
    admission.py  capacity and per-key caps, checked in the API process before a session opens

The API process never renders: it authenticates, validates, admits and relays.
"""
