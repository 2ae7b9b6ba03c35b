"""The domain's errors. Each boundary (HTTP in :mod:`rpad.api.errors`, the WebSocket hub)
translates them once into its own answer."""

from __future__ import annotations


class UnknownClient(Exception):
    """The client id is not registered (and registration is manual)."""


class RateLimited(Exception):
    """Heartbeats from one client faster than the minimum interval."""

    def __init__(self, retry_after_seconds: float) -> None:
        self.retry_after_seconds = retry_after_seconds
        super().__init__(f"retry after {retry_after_seconds:.3f} s")


class StorageUnavailable(Exception):
    """The backend could not make a write durable (disk full, read-only, I/O error, the shared
    backend unreachable). The write is kept and retried; the request is not acknowledged."""


class BackendUnavailable(StorageUnavailable):
    """The shared backend (Redis) cannot be reached, or refuses writes for now: nothing was
    written; retry after ``retry_after_seconds``."""

    def __init__(self, message: str, retry_after_seconds: float = 5.0) -> None:
        self.retry_after_seconds = retry_after_seconds
        super().__init__(message)


class NotFound(Exception):
    """A named thing the request refers to does not exist (404); ``code`` says what kind."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


class Conflict(Exception):
    """The request conflicts with the current state, and may succeed later (409)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


class ValidationFailed(Exception):
    """A request body with bad fields. ``details`` is ``[{"field", "message"}]``."""

    def __init__(self, details: list[dict[str, str]]) -> None:
        self.details = details
        fields = ", ".join(d["field"] for d in details)
        super().__init__(f"invalid field{'s' if len(details) > 1 else ''}: {fields}")


class AuthError(Exception):
    """401 (``unauthorized``: no or bad token) or 403 (``forbidden``: valid, not allowed)."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        self.status = status
        self.code = code or ("unauthorized" if status == 401 else "forbidden")
        self.message = message
        super().__init__(message)


class TooManyFailures(Exception):
    """Too many failed authentications from one address: refused for a while."""

    def __init__(self, retry_after_seconds: float) -> None:
        self.retry_after_seconds = retry_after_seconds
        super().__init__("too many failed authentications from this address; wait and retry")


class FleetFull(Exception):
    """A new client would take the fleet past ``presence.max_clients``."""

    def __init__(self, max_clients: int) -> None:
        self.max_clients = max_clients
        super().__init__(f"the fleet is at its cap of {max_clients} clients")


class TooManyRegistrations(Exception):
    """One token subject registers new clients faster than ``presence.registrations_per_minute``."""

    def __init__(self, retry_after_seconds: float) -> None:
        self.retry_after_seconds = retry_after_seconds
        super().__init__(f"retry after {retry_after_seconds:.3f} s")
