"""Optional login for the whole web app (VIDSEARCH_AUTH).

One set of credentials protects everything the FastAPI app serves: Gradio's UI (its own login form, `auth=` of
`gr.mount_gradio_app`), the stored media under /media, and any route added later (e.g. /api/...). An app-wide ASGI
middleware lets a request through when it carries valid HTTP Basic credentials or the session cookie of a Gradio
login; otherwise the answer is 401 with no content. Only what Gradio's login page itself needs is public.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import secrets
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.staticfiles import StaticFiles

if TYPE_CHECKING:
    from collections.abc import Iterable

    from fastapi import FastAPI
    from gradio.routes import App as GradioApp
    from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

REALM = "vidsearch"
# What Gradio's login page loads before anyone has logged in (the page shell, its scripts, styles and icons, and the
# login form's POST). Everything else, Gradio's API and config included, needs credentials.
PUBLIC_PATHS = frozenset({"/", "/login", "/login/", "/favicon.ico", "/theme.css", "/manifest.json", "/robots.txt"})
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon")
# Gradio's own first path segments: a 401 there carries no WWW-Authenticate header, so that the browser shows
# Gradio's login form rather than its native Basic prompt.
GRADIO_SEGMENTS = frozenset({"", "gradio_api", "config", "login", "logout", "assets", "static", "svelte",
                             "theme.css", "favicon.ico", "manifest.json", "robots.txt", "pwa_icon", "monitoring"})


class AuthConfigError(ValueError):
    """VIDSEARCH_AUTH could not be understood (the message never contains a password)."""


class Credentials:
    """Accounts allowed to log in; passwords are compared in constant time."""

    def __init__(self, accounts: dict[str, str]) -> None:
        if not accounts:
            raise AuthConfigError("VIDSEARCH_AUTH lists no account")
        self._accounts = {user: password.encode() for user, password in accounts.items()}
        self._dummy = secrets.token_bytes(32)

    @property
    def users(self) -> list[str]:
        return sorted(self._accounts)

    def check(self, user: str, password: str) -> bool:
        expected = self._accounts.get(user)
        # Compare against a dummy for unknown users too, so that timing does not tell which user names exist.
        same = secrets.compare_digest(password.encode(), expected if expected is not None else self._dummy)
        return same and expected is not None

    def __repr__(self) -> str:  # never print passwords
        return f"Credentials(users={self.users})"


def parse_credentials(spec: str) -> Credentials:
    """`user:password[,user:password...]`, or the path of a file with one `user:password` per line.

    In a file, blank lines and lines starting with # are ignored and passwords may contain commas. A password may
    contain ':' (the user name ends at the first one)."""
    spec = spec.strip()
    path = Path(spec).expanduser()
    if "\n" not in spec and path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise AuthConfigError(f"VIDSEARCH_AUTH: cannot read {path}: {exc}") from None
        entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        where = f"line of {path}"
    else:
        entries = [part.strip() for part in spec.split(",") if part.strip()]
        where = "entry of VIDSEARCH_AUTH"
    accounts: dict[str, str] = {}
    for number, entry in enumerate(entries, 1):
        user, sep, password = entry.partition(":")
        user = user.strip()
        if not sep or not user or not password:
            raise AuthConfigError(f"VIDSEARCH_AUTH: {where} #{number} is not user:password "
                                  "(or the value is neither user:password nor an existing file)")
        accounts[user] = password
    return Credentials(accounts)


def load_credentials(value: object | None) -> Credentials | None:
    """Credentials from the `auth` setting (a str or pydantic SecretStr), or None when login is off."""
    if value is None:
        return None
    raw = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    return parse_credentials(raw) if raw.strip() else None


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def warn_if_exposed(host: str, credentials: Credentials | None) -> bool:
    """Log a warning when the app is reachable from other machines without a login. True if it warned."""
    if credentials is None and not is_loopback(host):
        log.warning("vidsearch is listening on %s without a login: anyone who can reach this address can search, "
                    "upload, delete and watch every video. Set VIDSEARCH_AUTH=user:password (or a file of such "
                    "lines), or bind to 127.0.0.1.", host)
        return True
    return False


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic ...` header, or None."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _cookies(header: str | None) -> dict[str, str]:
    if not header:
        return {}
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return {}
    return {key: morsel.value for key, morsel in jar.items()}


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class AuthMiddleware:
    """App-wide gate: HTTP Basic credentials or a Gradio login session, else 401 (public: the login page only)."""

    def __init__(self, app: ASGIApp, credentials: Credentials, gradio_app: GradioApp) -> None:
        self.app = app
        self.credentials = credentials
        self.gradio = gradio_app
        # One Gradio session per account, handed to Gradio (in the request only, never in a response cookie) for
        # requests authenticated with Basic credentials, so that Gradio's own login checks accept them too.
        self._basic_tokens: dict[str, str] = {}

    def _session_cookie_names(self) -> tuple[str, str]:
        cookie_id = self.gradio.cookie_id
        return f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"

    def _session_user(self, headers: dict[bytes, bytes]) -> str | None:
        jar = _cookies(headers.get(b"cookie", b"").decode("latin-1"))
        for name in self._session_cookie_names():
            token = jar.get(name)
            if token and (user := self.gradio.tokens.get(token)) is not None:
                return user
        return None

    def _with_gradio_session(self, scope: Scope, user: str) -> Scope:
        token = self._basic_tokens.get(user)
        if token is None or self.gradio.tokens.get(token) != user:  # Gradio's logout may have dropped it
            token = secrets.token_urlsafe(32)
            self.gradio.tokens[token] = user
            self._basic_tokens[user] = token
        names = self._session_cookie_names()
        added = f"{names[0]}={token}; {names[1]}={token}".encode("latin-1")
        headers = [(k, v) for k, v in scope["headers"] if k != b"cookie"]
        existing = [v for k, v in scope["headers"] if k == b"cookie"]
        headers.append((b"cookie", b"; ".join([*existing, added])))
        return {**scope, "headers": headers}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {}
        for key, value in scope["headers"]:
            headers.setdefault(key, value)
        basic = basic_credentials(headers.get(b"authorization", b"").decode("latin-1") or None)
        if basic is not None and self.credentials.check(*basic):
            await self.app(self._with_gradio_session(scope, basic[0]), receive, send)
            return
        path = scope.get("path", "")
        if self._session_user(headers) is not None or (basic is None and _is_public(path)):
            await self.app(scope, receive, send)
            return
        await self._refuse(scope, receive, send, path)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"detail": {"error": "Not authenticated", "auth_message": None}}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if (path + "/").split("/", 2)[1] not in GRADIO_SEGMENTS and not path.startswith("/file="):
            headers.append((b"www-authenticate", f'Basic realm="{REALM}", charset="UTF-8"'.encode()))
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""})


def find_gradio_app(app: FastAPI) -> GradioApp:
    from gradio.routes import App as GradioApp

    for route in app.routes:
        if isinstance(getattr(route, "app", None), GradioApp):
            return route.app
    raise RuntimeError("no Gradio app is mounted on this FastAPI app")


def protect(app: FastAPI, credentials: Credentials) -> None:
    """Require login on every route of `app` (call after mounting Gradio with `auth=credentials.check`)."""
    app.add_middleware(AuthMiddleware, credentials=credentials, gradio_app=find_gradio_app(app))
    log.info("login required for users: %s", ", ".join(credentials.users))


def gradio_blocked_paths(home: Path, allowed_inside: Iterable[Path]) -> list[str]:
    """Paths Gradio's own file routes must never serve: the whole data folder (catalog, Milvus data, videos, caches).

    Should one of Gradio's own folders (uploads, cache) lie inside the data folder, block every other entry of it
    instead, so that Gradio keeps working."""
    home = home.resolve()
    inside = [p.resolve() for p in allowed_inside]
    if not any(p == home or home in p.parents for p in inside):
        return [str(home)]
    keep = {p if p.parent == home else next(a for a in p.parents if a.parent == home) for p in inside}
    known = {"videos", "milvus", "cache", "thumbnails", "catalog.db", "catalog.db-wal", "catalog.db-shm",
             "catalog.db-journal", "milvus-server.json", "milvus-server.log", "milvus-server.lock"}
    entries = {home / name for name in known} | (set(home.iterdir()) if home.is_dir() else set())
    return sorted(str(p) for p in entries if p not in keep)


class MediaFiles(StaticFiles):
    """StaticFiles for the stored videos that never lets a stored file act as a page of this site.

    A stored copy keeps the extension of the client's file name, and a file that decodes as a video can still be an
    HTML or SVG polyglot; served as text/html from this origin it would run script with the user's session. So
    anything that is not audio/video/image is sent as a download, sniffing is off, and a sandbox CSP applies."""

    SAFE_PREFIXES = ("video/", "audio/", "image/")

    def file_response(self, full_path, stat_result, scope, status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        media_type = (response.headers.get("content-type") or "").split(";")[0].strip().lower()
        if not media_type.startswith(self.SAFE_PREFIXES) or media_type == "image/svg+xml":
            response.headers["content-type"] = "application/octet-stream"
            response.headers["content-disposition"] = "attachment"
        response.headers["x-content-type-options"] = "nosniff"
        response.headers["content-security-policy"] = "sandbox; default-src 'none'; media-src 'self'"
        return response
