"""Exceptions a fedsk user can act on.

Everything fedsk raises on purpose derives from :class:`FedskError`. Errors that are
also bad input derive from :class:`ValueError` as well, and an unreachable party is also
a :class:`ConnectionError`, so ``except ValueError`` and ``except ConnectionError`` keep
working in code that does not know fedsk.
"""

__all__ = [
    "AuthenticationError",
    "BadMessageError",
    "ConflictError",
    "FedskError",
    "NotFoundError",
    "PackingOverflowError",
    "PartyUnavailableError",
    "ProtocolError",
    "RequestError",
]


class FedskError(Exception):
    """Base class of every error fedsk raises on purpose."""


class PartyUnavailableError(FedskError, ConnectionError):
    """A party could not be reached (or kept failing) within the configured time.

    Parameters
    ----------
    party : str
        Name of the party (e.g. ``"insurer"``).
    url : str
        The address that was tried.
    tried : str
        What was tried, e.g. ``"4 attempts over 12.3 s (connect timeout 5 s)"``.
    cause : str, default=""
        The last low-level error.
    advice : str, default=None
        What to do; by default, to check that the party's server runs and retry.
    """

    def __init__(self, party, url, tried, cause="", advice=None):
        self.party, self.url, self.tried, self.cause = party, url, tried, cause
        self.advice = advice
        msg = f"party {party!r} at {url} is unavailable: {tried}"
        if cause:
            msg += f"; last error: {cause}"
        msg += ". " + (
            advice or "Check that its party server is running and reachable, then retry."
        )
        super().__init__(msg)

    def __reduce__(self):
        return (type(self), (self.party, self.url, self.tried, self.cause, self.advice))


class AuthenticationError(FedskError):
    """A party refused our token (HTTP 401/403)."""


class ProtocolError(FedskError):
    """A party answered something that does not follow the protocol.

    Raised for malformed or truncated bodies, unexpected fields, ciphertexts out of
    range, and for 4xx answers that mean the two sides disagree about the protocol.
    """


class PackingOverflowError(FedskError, ValueError):
    """Values packed into one Paillier plaintext overflowed their slots."""


class RequestError(FedskError, ValueError):
    """A request a party refuses: it becomes a JSON 4xx answer at the party server.

    Host halves of the protocols raise it (or a subclass) for anything a peer sent
    that cannot be used; the party server turns it into
    ``{"error": {"code", "message", "request_id"}}`` with :attr:`status`.
    """

    status = 400
    code = "bad_request"

    def __init__(self, message, *, code=None, status=None):
        super().__init__(message)
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class BadMessageError(RequestError, ProtocolError):
    """A message is malformed: wrong framing, missing field, bad shape or dtype.

    On the host it is a 400 answer; on the guest (reading an answer) a ProtocolError.
    """

    code = "bad_message"


class NotFoundError(RequestError):
    """An unknown (or expired, or someone else's) session, model or dataset."""

    status = 404
    code = "not_found"


class ConflictError(RequestError):
    """A request that does not fit the session's current state."""

    status = 409
    code = "conflict"
