"""When to try a request again: 429 and 503 (after `Retry-After`) and lost connections."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

RETRY_STATUSES = frozenset({429, 503})
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0
# A server asking for a longer wait is better answered at once: the caller may prefer to give up.
RETRY_AFTER_CAP_S = 120.0


def backoff(attempt: int) -> float:
    """Full jitter over an exponential ceiling, so clients that failed together spread out."""
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from `Retry-After`, given as delay-seconds or as an HTTP-date (RFC 9110 10.2.3)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def delay(
    attempt: int, max_retries: int, status: int | None = None, retry_after: float | None = None
) -> float | None:
    """Seconds to wait before retry `attempt + 1`, or None to give up.

    `status` None means the connection failed; `retry_after` is at least waited, with jitter on
    top so that clients told the same time do not all come back at once.
    """
    if attempt >= max_retries:
        return None
    if status is not None and status not in RETRY_STATUSES:
        return None
    if retry_after is None:
        return backoff(attempt)
    if retry_after > RETRY_AFTER_CAP_S:
        return None
    return retry_after + backoff(attempt)
