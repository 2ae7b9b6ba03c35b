"""One way in: a token and the address it came from → a :class:`~rpad.core.principal.Principal`,
for every HTTP route and the WebSocket hub alike.

Failed authentications count per address in the :class:`~rpad.backend.base.FailureCounter`
(the HTTP API's and the hub's together); an address over the limit is refused
(:class:`~rpad.core.errors.TooManyFailures`) before its token is even looked at. Each boundary
translates the errors into its own answer (HTTP 401/403/429, WebSocket close 4001).
"""

from __future__ import annotations

import logging

from ..auth import Authenticator
from ..backend.base import FailureCounter
from ..core.errors import AuthError, TooManyFailures
from ..core.principal import Principal
from ..tickets import note_authenticated

log = logging.getLogger(__name__)

MISSING_TOKEN = "an Authorization: Bearer <token> header is required"


class Gate:
    def __init__(self, auth: Authenticator, failures: FailureCounter) -> None:
        self.auth = auth
        self.failures = failures

    @property
    def leeway_seconds(self) -> float:
        return self.auth.leeway_seconds

    def check(self, peer: str) -> None:
        """Raise TooManyFailures while ``peer`` is refused."""
        retry = self.failures.blocked(peer)
        if retry is not None:
            raise TooManyFailures(retry)

    def failed(self, peer: str) -> None:
        self.failures.failed(peer)

    def verify(self, token: str, peer: str, *, where: str = "") -> Principal:
        """The token's principal; a bad token counts against ``peer`` and raises AuthError."""
        try:
            return self.auth.verify(token)
        except AuthError as exc:
            self.failures.failed(peer)
            log.warning("%sauthentication failed from %s: %s", where, peer, exc.message)
            raise

    def verify_only(self, token: str) -> Principal:
        """The token's principal, without counting a failure (a token refresh on a connection
        that is already authenticated)."""
        return self.auth.verify(token)

    def authenticate(self, token: str | None, peer: str) -> Principal:
        """:meth:`check`, then :meth:`verify`; no token at all is a 401 that is not counted.
        (An HTTP request: its connection is proven from now on, see :mod:`rpad.listeners`.)"""
        self.check(peer)
        if token is None:
            raise AuthError(401, MISSING_TOKEN)
        principal = self.verify(token, peer)
        note_authenticated()
        return principal
