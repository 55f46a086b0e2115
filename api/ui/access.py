"""Who may read the dashboard: the API's key rules (api/deps.py), plus a cookie.

Reads are open unless ``RECSYS_READS_REQUIRE_KEY`` is set; then every page (and every file a
page links, such as a model card's plots) needs a valid key, given as the API takes it
(``X-API-Key`` header) or in the ``recsys_ui_key`` cookie the key form sets (HttpOnly,
SameSite=Strict, path ``/ui``). No key → 401, a wrong key → 403, both answered with the key
form and no data. The cookie is only ever accepted by ``/ui`` pages, which never write, so a
cross-site request cannot use it to change anything; the admin buttons send the key the
operator types to the existing ``/admin`` routes in the ``X-API-Key`` header.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

COOKIE = "recsys_ui_key"
COOKIE_PATH = "/ui"


class KeyRequired(Exception):
    """Raised by :func:`ui_access` when the deployment requires read keys; answered with the key form."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code, self.message = status_code, message


@dataclass(frozen=True)
class UiAccess:
    """What the request may do: ``key`` is a valid key it carries (or None)."""

    key: str | None
    #: a key was given but is not valid (reads are open, so the page still shows)
    key_rejected: bool = False
    via_cookie: bool = False

    @property
    def has_key(self) -> bool:
        return self.key is not None


async def ui_access(request: Request) -> UiAccess:
    """Dependency of every ``/ui`` page: the API's read rule, with the cookie as a second way in."""
    header = request.headers.get("x-api-key")
    cookie = request.cookies.get(COOKIE)
    key = header or cookie
    state = request.app.state
    valid = bool(key) and state.keys.valid(key)
    if state.settings.reads_require_key:
        if not key:
            raise KeyRequired(401, "this deployment requires an API key for reads")
        if not valid:
            raise KeyRequired(403, "the API key is not valid")
    return UiAccess(key=key if valid else None, key_rejected=bool(key) and not valid, via_cookie=not header and valid)
