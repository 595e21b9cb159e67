"""One error hierarchy. HTTP status codes are chosen only in flashhead.api.errors."""
from __future__ import annotations


class FlashheadError(Exception):
    """Base class. `error_type` is the stable machine-readable kind sent to clients."""

    error_type = "internal_error"

    def __init__(self, message: str, *, field: str | None = None, location: str = "body"):
        super().__init__(message)
        self.message = message
        self.field = field
        self.location = location         # where `field` was sent: body | query | header

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class InputError(FlashheadError):
    """The request itself is wrong (bad image, audio, text, option)."""

    error_type = "invalid_input"


class UnsupportedMediaType(InputError):
    """The body is not of the content type the route takes (WHEP: application/sdp)."""

    error_type = "unsupported_media_type"


class NoFaceError(InputError):
    error_type = "no_face_detected"


class LimitExceeded(InputError):
    """Too big, too long, too many pixels, too slow to fetch."""

    error_type = "limit_exceeded"


class FetchError(InputError):
    """A URL could not be fetched (network error, HTTP error status, timeout)."""

    error_type = "fetch_failed"


class UnsafeURLError(InputError):
    """A URL points into loopback, a private network, link-local or metadata space."""

    error_type = "unsafe_url"


class NotFound(FlashheadError):
    error_type = "not_found"


class Cancelled(FlashheadError):
    error_type = "cancelled"


class Timeout(FlashheadError):
    error_type = "timeout"


class BackendUnavailable(FlashheadError):
    """A renderer, TTS engine or GPU is not usable (missing weights, no CUDA, ...)."""

    error_type = "backend_unavailable"


class ShuttingDown(BackendUnavailable):
    """The server is stopping (SIGTERM): a stream or live session still running when its grace
    ends is cut with this. Another server (or this one restarted) can take the request."""

    error_type = "shutting_down"

    def __init__(self, message: str = "the server is shutting down; send the request again (to another "
                 "server, or once it is back)", *, field: str | None = None):
        super().__init__(message, field=field)


class RenderFailed(FlashheadError):
    error_type = "render_failed"


class AlreadyStored(FlashheadError):
    """A file was put, not to be replaced, under a key that holds one already."""

    error_type = "already_stored"


class Unauthorized(FlashheadError):
    error_type = "unauthorized"


class Forbidden(FlashheadError):
    """No key would help: the request may not be made at all (an open server refusing a page of
    another site)."""

    error_type = "forbidden"


class QueueFull(FlashheadError):
    error_type = "queue_full"


class RateLimited(FlashheadError):
    """Too many requests: a key over its rate or active-job limit, or an upstream service
    (ElevenLabs) that kept answering 429 after the retries. Retry after `retry_after_s` s."""

    error_type = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float = 30.0, field: str | None = None):
        super().__init__(message, field=field)
        self.retry_after_s = retry_after_s


class PayloadTooLarge(FlashheadError):
    """A request body over its size limit, refused while it is being read."""

    error_type = "payload_too_large"


class BodyTimeout(FlashheadError):
    """A request body that did not arrive within its read timeout."""

    error_type = "request_timeout"


class StorageFull(FlashheadError):
    """The disk (or bucket quota) holding files is full: nothing new can be written."""

    error_type = "storage_full"
class CapacityExceeded(FlashheadError):
    """Every real-time slot (of the engine, or of this key) is taken: try again later."""

    error_type = "capacity_exceeded"

    def __init__(self, message: str, *, retry_after_s: int = 5):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineFailed(RenderFailed):
    """The render engine process died or hung while this session ran."""

    error_type = "engine_failed"


def error_for_type(error_type: str, message: str, field: str | None = None) -> FlashheadError:
    """Rebuild an error sent across a process boundary as (error_type, message, field)."""
    def subclasses(cls):
        yield cls
        for sub in cls.__subclasses__():
            yield from subclasses(sub)
    cls = next((c for c in subclasses(FlashheadError) if c.error_type == error_type
                and c is not CapacityExceeded), FlashheadError)
    return cls(message, field=field)
