"""Secret comparisons for the web guards: constant time, and never an exception.

`hmac.compare_digest` raises TypeError on a `str` with non-ASCII characters, so a
non-ASCII Basic username/password or X-Webhook-Secret was a 500 with a traceback per
request (log flooding), and a non-ASCII configured password locked everyone out. Here
both sides are compared as bytes: the configured secret as UTF-8, a header as the bytes
that came over the wire (WSGI hands them over decoded as latin-1), Basic credentials as
werkzeug decoded them (UTF-8; credentials that are not UTF-8 are no credentials).

`FailureLimiter`: failed Basic auth is rate limited per client address (issue 20)."""

from __future__ import annotations

import hmac
import math
import threading
import time


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def header_bytes(value: str | None) -> bytes:
    """A WSGI header value as the raw bytes the client sent."""
    if not value:
        return b""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:  # not from a WSGI server: take the text as it is
        return _utf8(value)


def same_secret(given: str | bytes | None, expected: str) -> bool:
    """Constant-time equality of a given secret with the configured one; False (never an
    exception) for anything malformed."""
    if given is None:
        given = b""
    given_bytes = given if isinstance(given, bytes) else _utf8(given)
    return hmac.compare_digest(given_bytes, _utf8(expected))


def basic_auth_ok(authorization: object, user: str, password: str) -> bool:
    """werkzeug's `request.authorization` (or None) against the configured pair; both
    compared, so the time does not say which one was wrong."""
    if authorization is None or getattr(authorization, "type", None) != "basic":
        return False
    user_ok = same_secret(getattr(authorization, "username", None) or "", user)
    password_ok = same_secret(getattr(authorization, "password", None) or "", password)
    return user_ok and password_ok


def webhook_secret_ok(header_value: str | None, secret: str) -> bool:
    """The X-Webhook-Secret header (as WSGI gives it) against WEBHOOK_SECRET."""
    return same_secret(header_bytes(header_value), secret)


class FailureLimiter:
    """Failed Basic auth attempts per client address: a token bucket each, `per_minute`
    tokens deep, refilled at `per_minute` a minute; a failure takes one. An address with
    an empty bucket gets 429 with Retry-After until a token is back, also for a right
    password (a guesser learns nothing while limited). In-process: each web process
    counts its own; behind a reverse proxy every client has the proxy's address, so limit
    there too (README, security). Memory: at most MAX_ADDRESSES buckets, full ones
    dropped first."""

    MAX_ADDRESSES = 10_000

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)
        self._lock = threading.Lock()

    def _tokens(self, address: str, now: float) -> float:
        tokens, at = self._buckets.get(address, (float(self.per_minute), now))
        return min(float(self.per_minute), tokens + (now - at) * self.per_minute / 60.0)

    def retry_after(self, address: str) -> int:
        """Seconds until `address` may try again; 0: now."""
        if self.per_minute <= 0:
            return 0
        with self._lock:
            tokens = self._tokens(address, time.monotonic())
        return 0 if tokens >= 1.0 else math.ceil((1.0 - tokens) * 60.0 / self.per_minute)

    def failed(self, address: str) -> None:
        if self.per_minute <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens = self._tokens(address, now)
            self._buckets[address] = (max(0.0, tokens - 1.0), now)
            if len(self._buckets) > self.MAX_ADDRESSES:
                self._forget(now)

    def _forget(self, now: float) -> None:
        """Drop the buckets that are full again (they limit nothing), else the oldest."""
        full = [a for a in self._buckets if self._tokens(a, now) >= self.per_minute]
        for address in full or sorted(self._buckets, key=lambda a: self._buckets[a][1])[:1000]:
            del self._buckets[address]
