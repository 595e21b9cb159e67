"""flashhead as a Pipecat video service: TTS audio in, a talking face (and that same audio) out."""
from flashhead_pipecat.protocol import ConnectionLost, FlashHeadError, ServerError
from flashhead_pipecat.service import FlashHeadVideoService

__all__ = ["ConnectionLost", "FlashHeadError", "FlashHeadVideoService", "ServerError"]
