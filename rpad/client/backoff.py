"""Exponential backoff with jitter, as one pure function and a small stateful helper.

Used by the reference agent, ``rpad watch`` and the alert webhooks; the dashboard's JavaScript
client (``static/rpad-client.js``, ``backoffDelay``) computes exactly the same formula:

    base  = min(maximum, initial * factor ** attempt)
    delay = base * (1 - jitter * r)        # r uniform in [0, 1)

so attempt 0 waits ``initial`` (less a random part of at most ``jitter``), attempt 1 twice that,
and so on up to ``maximum``. The jitter only ever shortens a delay, so ``maximum`` is a hard
bound; it spreads out clients that all lost the same server at the same moment.
"""

from __future__ import annotations

import random as random_mod
from collections.abc import Callable

INITIAL_SECONDS = 1.0
MAXIMUM_SECONDS = 30.0
FACTOR = 2.0
JITTER = 0.2


def backoff_delay(attempt: int, *, initial: float = INITIAL_SECONDS, factor: float = FACTOR,
                  maximum: float = MAXIMUM_SECONDS, jitter: float = JITTER,
                  r: float = 0.0) -> float:
    """The delay in seconds before retry number ``attempt`` (0 for the first retry).

    ``r`` is the random draw in [0, 1); with ``r = 0`` (or ``jitter = 0``) the result is exact.
    """
    if attempt < 0:
        raise ValueError("attempt must not be negative")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError("jitter must be from 0 to 1")
    # Compare exponents rather than computing factor ** attempt, which overflows for large
    # attempt numbers.
    base = initial
    for _ in range(attempt):
        base *= factor
        if base >= maximum:
            base = maximum
            break
    base = min(base, maximum)
    return base * (1.0 - jitter * r)


class Backoff:
    """Successive delays for one retry loop: :meth:`next_delay` after each failure,
    :meth:`reset` after a success. ``random`` is injectable so tests get exact delays."""

    def __init__(self, *, initial: float = INITIAL_SECONDS, factor: float = FACTOR,
                 maximum: float = MAXIMUM_SECONDS, jitter: float = JITTER,
                 random: Callable[[], float] = random_mod.random) -> None:
        self.initial = initial
        self.factor = factor
        self.maximum = maximum
        self.jitter = jitter
        self.random = random
        self.attempt = 0

    def next_delay(self) -> float:
        delay = backoff_delay(self.attempt, initial=self.initial, factor=self.factor,
                              maximum=self.maximum, jitter=self.jitter, r=self.random())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
