"""Live sessions: speech audio pushed as it is spoken -> video chunks, without freezing.

`LiveSession` is independent of HTTP; the render engine (flashhead.engine) steps one per live
realtime socket.
Sessions share the process's renderer and its prepared portraits (Engines.portraits).
"""
from flashhead.live.session import LiveChunk, LiveSession

__all__ = ["LiveChunk", "LiveSession"]
