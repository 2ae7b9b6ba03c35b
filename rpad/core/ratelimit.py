"""A token bucket per key (the registrations of each token subject), on a clock the caller
passes in.

Each key may take ``per_minute`` at once, and earns them back at ``per_minute`` a minute. A key
whose bucket has filled up again is forgotten, and at most ``max_keys`` keys are remembered
(past that, the full ones are dropped first, then the oldest), so memory stays bounded whatever
the keys. A clock stepped back counts as no time passing.
"""

from __future__ import annotations

SECONDS_PER_MINUTE = 60.0
MAX_KEYS = 100_000


class RatePerKey:
    def __init__(self, per_minute: float, *, max_keys: int = MAX_KEYS) -> None:
        self.per_minute = per_minute
        self.max_keys = max_keys
        # key -> (tokens, when they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}

    def _tokens(self, key: str, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return self.per_minute
        tokens, at = entry
        earned = max(0.0, now - at) * self.per_minute / SECONDS_PER_MINUTE
        return min(self.per_minute, tokens + earned)

    def take(self, key: str, now: float) -> float | None:
        """Take one for ``key``: None if allowed, else the seconds until one is earned."""
        tokens = self._tokens(key, now)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) * SECONDS_PER_MINUTE / self.per_minute
        self._buckets.pop(key, None)  # re-inserted last: the dict stays oldest-first
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self.max_keys:
            self._shrink(now)
        return None

    def _shrink(self, now: float) -> None:
        for key in [k for k in self._buckets if self._tokens(k, now) >= self.per_minute]:
            del self._buckets[key]
        while len(self._buckets) > self.max_keys:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)
