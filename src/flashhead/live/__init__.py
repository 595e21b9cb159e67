"""Live sessions: speech audio pushed as it is spoken -> video chunks, without freezing.

`LiveSession` is independent of HTTP; flashhead.api.realtime drives one per socket.
Sessions share the process's renderer and its prepared portraits (Engines.portraits).
"""
from flashhead.live.session import LiveChunk, LiveSession

__all__ = ["LiveChunk", "LiveSession"]
