"""API keys and their rate limits: the keys file, checking a request's key, counting its requests.

With SD3SERVE_API_KEYS_FILE set, every request needs `Authorization: Bearer KEY` but those of
the few open paths (health, readiness, the API's description, and metrics unless configured
otherwise): an ASGI middleware (`ApiKeyMiddleware`) checks it before any route runs, so that a
client without a key learns nothing from validation errors, 404s or 405s, and counts the
request against the key's rate limit. It fails closed: a path no one declared open, a route
added later included, needs a key. The route sees the key's name (`request_owner`), which owns
the jobs it makes.

The file holds one key a line, `NAME SHA256-OF-KEY [RATE]`; blank lines and `#` comments are
skipped. Only digests are stored, so the file reveals no key; `sd3-serve keys create` makes a
key and prints its line.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import secrets
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from common import keys
from common.settings import SettingsError, env_var
from service.errors import (
    REDIS_DOWN_MESSAGE,
    REDIS_RETRY_AFTER_S,
    ApiError,
    NotReady,
    RateLimited,
    Unauthorized,
    error_response,
)
from service.openai_compat import from_api_error

log = logging.getLogger(__name__)

KEY_PREFIX = "sd3_"
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DIGEST = re.compile(r"[0-9a-fA-F]{64}")
RATE = re.compile(r"([1-9][0-9]{0,8})/(second|minute|hour|day)")
RATE_FORMAT = "COUNT/second, COUNT/minute, COUNT/hour or COUNT/day"
LINE_FORMAT = "NAME SHA256-OF-KEY [RATE]"
# Where the middleware leaves the key's name for the routes (request.state).
STATE_FIELD = "api_key"
# The API's own routes, each needing a key (and described so) where the API has keys.
KEYED_PREFIX = "/v1/"
# Open unless SD3SERVE_METRICS_REQUIRE_KEY; never counted toward a rate limit.
METRICS_PATH = "/metrics"
NO_KEY_MESSAGE = "this API needs a key: send `Authorization: Bearer KEY`"
BAD_KEY_MESSAGE = "the API key is not valid"


class KeysFileError(SettingsError):
    """A keys file refused at start: one line naming the file and line, never its content."""


def parse_rate(text: str) -> RateLimitItem:
    """`60/minute` and the like, as a `limits` item; ValueError naming the accepted forms."""
    match = RATE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"a rate is {RATE_FORMAT}, e.g. 60/minute")
    return parse(f"{match[1]}/{match[2]}")


def rate_limited_message(rate: RateLimitItem, retry_after_s: int) -> str:
    return (
        f"the rate limit of this key, {rate.amount} per {rate.GRANULARITY.name}, is reached; "
        f"retry in {retry_after_s} s"
    )


def hash_key(key: str) -> str:
    """The SHA-256 hex digest of a key: what the keys file holds in its place."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A new random key: 256 bits, URL-safe, recognisable by its prefix (as in a leak scan)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_line(name: str, key: str, rate: str | None = None) -> str:
    """The keys-file line of `key`: its name, its digest and, when given, its own rate."""
    if not KEY_NAME.fullmatch(name):
        raise ValueError("a key's name is 1 to 64 letters, digits, '.', '_' or '-'")
    if rate is not None:
        parse_rate(rate)
    return " ".join([name, hash_key(key), *([rate] if rate else [])])


@dataclass(frozen=True)
class ApiKey:
    name: str
    rate: RateLimitItem


class KeyRing:
    """The keys of the keys file, found by the digest of the key a request presents."""

    def __init__(self, by_digest: dict[str, ApiKey]) -> None:
        self._by_digest = by_digest

    def __len__(self) -> int:
        return len(self._by_digest)

    def identify(self, key: str) -> ApiKey | None:
        # A dict lookup rather than hmac.compare_digest against each entry: what is compared is
        # the SHA-256 of the presented key, so whatever timing reveals is about a digest the
        # client made, and learning a stored digest's first bytes brings no key that hashes to
        # it any closer (that would need a preimage). The key itself is never compared.
        return self._by_digest.get(hash_key(key))


def read_keys_file(path: Path, default_rate: RateLimitItem) -> KeyRing:
    """The file's keys, each with its own rate or `default_rate`; KeysFileError on any fault."""
    where = f"{env_var('api_keys_file')} {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise KeysFileError(f"{where}: cannot be read: {reason}") from None
    by_digest: dict[str, ApiKey] = {}
    lines_of: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue

        # The line may hold a key pasted by mistake: the message names the fault, not the text.
        def refuse(problem: str, number: int = number) -> KeysFileError:
            return KeysFileError(f"{where} line {number}: {problem}")

        fields = line.split()
        if len(fields) not in (2, 3):
            raise refuse(f"expected `{LINE_FORMAT}`, found {len(fields)} fields")
        name, digest, *rate_text = fields
        if not KEY_NAME.fullmatch(name):
            raise refuse("NAME must be 1 to 64 letters, digits, '.', '_' or '-'")
        if not DIGEST.fullmatch(digest):
            raise refuse(
                "SHA256-OF-KEY must be 64 hex digits, the key's digest "
                "(`sd3-serve keys create NAME` prints the whole line)"
            )
        digest = digest.lower()
        if name in lines_of:
            raise refuse(f"NAME is already used on line {lines_of[name]}")
        if digest in by_digest:
            raise refuse(f"the same key is already on line {lines_of[by_digest[digest].name]}")
        try:
            rate = parse_rate(rate_text[0]) if rate_text else default_rate
        except ValueError:
            raise refuse(f"RATE must be {RATE_FORMAT}") from None
        by_digest[digest] = ApiKey(name, rate)
        lines_of[name] = number
    if not by_digest:
        raise KeysFileError(f"{where}: holds no key; `sd3-serve keys create NAME` makes one")
    return KeyRing(by_digest)


def load_key_ring(keys_file: Path | None, default_rate: str) -> KeyRing | None:
    """The keys of SD3SERVE_API_KEYS_FILE, or None when it is unset (an open API)."""
    if keys_file is None:
        return None
    return read_keys_file(keys_file, parse_rate(default_rate))


class RateLimiter:
    """Each key's requests over a moving window, kept in Redis so that every API replica counts
    toward the same limit. Refused requests are not counted."""

    def __init__(self, redis: Redis) -> None:
        # The API's own connection pool (its retries, TLS and password); the URI only tells
        # `limits` which storage this is, so it carries no address and no secret.
        storage = RedisStorage(
            "async+redis://",
            implementation="redispy",
            # Passed on to redis-py, though `limits` annotates its options as scalars only.
            connection_pool=redis.connection_pool,  # type: ignore[arg-type]
            key_prefix=keys.RATE_LIMITS,
        )
        # A moving window counts exactly (N requests in any window's length), where a fixed
        # window lets 2N through across a boundary. Its entries are stamped by the API's clock:
        # replicas whose clocks disagree by s seconds see windows shifted by s.
        self._limiter = MovingWindowRateLimiter(storage)

    async def hit(self, key: ApiKey) -> int | None:
        """Count one request of `key`: None when it may go on, else the seconds until the
        window frees a slot (at least 1)."""
        if await self._limiter.hit(key.rate, key.name):
            return None
        stats = await self._limiter.get_window_stats(key.rate, key.name)
        if stats.remaining > 0:  # a slot freed since the refusal
            return 1
        return max(1, math.ceil(stats.reset_time - time.time()))


class Authenticator:
    """The keys, and (once the app's Redis is up) their rate limiter, for ApiKeyMiddleware."""

    def __init__(
        self, ring: KeyRing, open_paths: Collection[str], *, metrics_require_key: bool
    ) -> None:
        self.ring = ring
        self.open_paths = frozenset(open_paths) - ({METRICS_PATH} if metrics_require_key else set())
        self.limiter: RateLimiter | None = None

    def connect(self, redis: Redis) -> None:
        self.limiter = RateLimiter(redis)

    def needs_key(self, path: str) -> bool:
        return path not in self.open_paths

    @staticmethod
    def counted(path: str) -> bool:
        """Every request with a key counts toward the key's rate limit, bar metrics scrapes."""
        return path != METRICS_PATH


def bearer_token(scope: Scope) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header (the scheme in any case)."""
    for name, value in scope["headers"]:
        if name.lower() == b"authorization":
            scheme, _, token = bytes(value).decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class ApiKeyMiddleware:
    """Answers 401 to a keyed path without a valid key, and 429 past the key's rate limit; else
    hands the request on with the key's name in `request.state`."""

    def __init__(self, app: ASGIApp, auth: Authenticator, openai_paths: Collection[str] = ()):
        self.app = app
        self.auth = auth
        # Routes that answer every error in OpenAI's shape, these included.
        self.openai_paths = frozenset(openai_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The path as the router matches it, without the root path a proxy may mount us at.
        path = get_route_path(scope)
        if not self.auth.needs_key(path):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        key = self.auth.ring.identify(token) if token is not None else None
        if key is None:
            message = NO_KEY_MESSAGE if token is None else BAD_KEY_MESSAGE
            refusal = self._refuse(scope, Unauthorized(message))
            refusal.headers["WWW-Authenticate"] = "Bearer"
            await refusal(scope, receive, send)
            return
        if self.auth.counted(path):
            assert self.auth.limiter is not None, "the app's lifespan connects the limiter"
            try:
                retry_after_s = await self.auth.limiter.hit(key)
            except RedisError as exc:
                # Outside the app's exception handlers (errors.py): answered here as they would.
                log.warning("redis unavailable: %s", exc)
                down = NotReady(REDIS_DOWN_MESSAGE, retry_after_s=REDIS_RETRY_AFTER_S)
                await self._refuse(scope, down)(scope, receive, send)
                return
            if retry_after_s is not None:
                message = rate_limited_message(key.rate, retry_after_s)
                error = RateLimited(message, retry_after_s=retry_after_s)
                await self._refuse(scope, error)(scope, receive, send)
                return
        scope.setdefault("state", {})[STATE_FIELD] = key.name
        await self.app(scope, receive, send)

    def _refuse(self, scope: Scope, error: ApiError) -> Response:
        if scope["path"] in self.openai_paths:
            return from_api_error(error).response()
        return error_response(
            error.status, error.code, error.message, retry_after_s=error.retry_after_s
        )


def request_owner(request: Request) -> str | None:
    """The name of the key the request came with: the owner of the jobs it makes and may see.
    None when the API has no keys, and so no owners."""
    # Read from the scope, where ApiKeyMiddleware put it: Starlette's `request.state` raises
    # and catches two exceptions for a name it lacks, on every request of a keyless API.
    owner = request.scope.get("state", {}).get(STATE_FIELD)
    return owner if isinstance(owner, str) else None
