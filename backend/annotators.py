"""Annotator names for the dashboard: Label Studio's users API, cached.

Webhooks and Label Studio's API name an annotation's author by user id (`completed_by`),
which is what the label store keeps. The dashboard shows each user's email (else
username) from `GET /api/users/` (every member of the organisation in one call, through
label-studio-sdk, so personal access tokens work like legacy ones), cached for NAMES_TTL
s. Ids Label Studio does not list (a deleted user) and every id while Label Studio is
unreachable or refuses the token stay numeric ids: the page never waits on it for more
than TIMEOUT s, and a failure is remembered for FAILURE_TTL s, so an unreachable Label
Studio costs one short timeout a minute, not one per page view.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

NAMES_TTL = 300.0  # seconds a fetched list of names is used
FAILURE_TTL = 60.0  # seconds before an unreachable Label Studio is asked again
TIMEOUT = 3.0  # seconds one users call may take (the dashboard page waits on it)
MAX_USERS = 10_000  # names kept at most (bounded memory for a huge organisation)

Fetch = Callable[[], list[dict[str, Any]]]


def display_name(user: dict[str, Any]) -> str | None:
    """Email, else username, else first + last name; None when the user has none."""
    for key in ("email", "username"):
        value = str(user.get(key) or "").strip()
        if value:
            return value
    full = f"{user.get('first_name') or ''} {user.get('last_name') or ''}".strip()
    return full or None


def fetch_users(settings: Any) -> list[dict[str, Any]]:
    """Label Studio's `/api/users/` as plain dicts (raises on any failure)."""
    from label_studio_sdk import LabelStudio  # heavy import: only when names are asked for

    client = LabelStudio(base_url=settings.label_studio_url.rstrip("/"),
                         api_key=settings.label_studio_api_key, timeout=TIMEOUT)  # fmt: skip
    users = client.users.list(request_options={"max_retries": 0, "timeout_in_seconds": TIMEOUT})
    return [u.model_dump(mode="json") if hasattr(u, "model_dump") else dict(u) for u in users]


class AnnotatorNames:
    """user id -> display name, from Label Studio, cached (thread-safe)."""

    def __init__(self, settings: Any, fetch: Fetch | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.settings = settings
        self.fetch = fetch or (lambda: fetch_users(settings))
        self.clock = clock
        self._names: dict[int, str] = {}
        self._until = float("-inf")  # cache valid until this clock value
        self._lock = threading.Lock()
        self.error = ""  # why the names are ids now ("" when Label Studio answered)

    @property
    def configured(self) -> bool:
        return bool(getattr(self.settings, "label_studio_url", "")
                    and getattr(self.settings, "label_studio_api_key", ""))  # fmt: skip

    def names(self) -> dict[int, str]:
        """The cached names (fetched when stale); {} when Label Studio is not reachable."""
        if not self.configured:
            self.error = "LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY not set"
            return {}
        with self._lock:
            if self.clock() < self._until:
                return self._names
            try:
                users = self.fetch()
            except Exception as exc:  # down, slow, 401: ids for FAILURE_TTL s
                self.error = f"Label Studio's users API failed ({type(exc).__name__})"
                log.warning("annotator names: %s: %s", self.error, exc)
                self._names, self._until = {}, self.clock() + FAILURE_TTL
                return self._names
            names: dict[int, str] = {}
            for user in users[:MAX_USERS]:
                name, uid = display_name(user), user.get("id")
                if name and isinstance(uid, int):
                    names[uid] = name
            self._names, self._until, self.error = names, self.clock() + NAMES_TTL, ""
            return self._names

    def label(self, user_id: Any) -> str:
        """`email (id 3)` for a known user, the id alone otherwise."""
        name = self.names().get(user_id) if isinstance(user_id, int) else None
        return f"{name} (id {user_id})" if name else str(user_id)
