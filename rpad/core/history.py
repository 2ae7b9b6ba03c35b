"""Metrics history in tiers: the pure downsampling, its binary encodings and its re-bucketing.

Each heartbeat's metrics are a *sample*. Samples are kept as they came (the *raw* tier) and
folded into *rollups*: for every tier step (1 minute, 15 minutes, 1 hour by default), one
bucket ``[start, start + step)`` per client, aligned to the Unix epoch (so to UTC minutes and
hours), holding per metric the number of samples, their minimum, average and maximum.

Every tier is computed from the samples themselves (not from the tier below), in float64, so
a bucket is exact whatever its step; it is stored in float32 (charts need no more). The
statistics are *mergeable* (counts add, minima and maxima combine, averages weight by count),
which is what lets a query re-bucket stored rows to any multiple of their step, lets a restart
replay samples into half-built buckets, and would let several nodes build partial buckets of
one client.

Pure: no I/O, no clock. :class:`Downsampler` is told the samples (``add``) and the time
(``close(now)`` hands out every bucket whose end has passed). A sample older than a boundary
already closed (the wall clock stepped back) is counted in the oldest bucket still open
instead of re-opening a bucket that may be stored already.

Error handling: decoders raise ValueError for a blob that is not one of ours.
"""

from __future__ import annotations

import functools
import math
import struct
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, TypeAlias

import attrs

from .validation import METRIC_FIELDS

# The metrics kept, in their fixed order (bit i of a mask is METRIC_NAMES[i]).
METRIC_NAMES: tuple[str, ...] = METRIC_FIELDS
METRIC_INDEX = {name: i for i, name in enumerate(METRIC_NAMES)}
N_METRICS = len(METRIC_NAMES)

# Steps of the rollup tiers, in seconds; each is a multiple of the one before.
MINUTE_SECONDS = 60
QUARTER_HOUR_SECONDS = 900
HOUR_SECONDS = 3600
ROLLUP_STEPS = (MINUTE_SECONDS, QUARTER_HOUR_SECONDS, HOUR_SECONDS)
TIER_NAMES = {0: "raw", MINUTE_SECONDS: "1m", QUARTER_HOUR_SECONDS: "15m", HOUR_SECONDS: "1h"}

# An accumulator: for each metric, [count, sum, min, max] (4 doubles), in METRIC_NAMES order.
_SLOTS = 4
_EMPTY = array("d", [0.0, 0.0, math.inf, -math.inf] * N_METRICS)

# An accumulator: array("d") of N_METRICS * _SLOTS doubles.
if TYPE_CHECKING:
    Acc: TypeAlias = array[float]
else:
    Acc = array


def new_acc() -> Acc:
    return array("d", _EMPTY)


def acc_add_sample(acc: Acc, values: Mapping[str, float]) -> None:
    """Count one sample into ``acc``."""
    index = METRIC_INDEX
    for name, v in values.items():
        i = index.get(name)
        if i is None:
            continue
        j = i * _SLOTS
        acc[j] += 1.0
        acc[j + 1] += v
        acc[j + 2] = min(acc[j + 2], v)
        acc[j + 3] = max(acc[j + 3], v)


def acc_merge(acc: Acc, other: Acc) -> None:
    """Fold ``other`` into ``acc`` (both accumulators)."""
    for j in range(0, N_METRICS * _SLOTS, _SLOTS):
        n = other[j]
        if n:
            acc[j] += n
            acc[j + 1] += other[j + 1]
            acc[j + 2] = min(acc[j + 2], other[j + 2])
            acc[j + 3] = max(acc[j + 3], other[j + 3])


def acc_stats(acc: Acc) -> dict[str, tuple[int, float, float, float]]:
    """``{metric: (count, min, avg, max)}`` of the metrics seen."""
    out: dict[str, tuple[int, float, float, float]] = {}
    for i, name in enumerate(METRIC_NAMES):
        j = i * _SLOTS
        n = acc[j]
        if n:
            out[name] = (int(n), acc[j + 2], acc[j + 1] / n, acc[j + 3])
    return out


def acc_samples(acc: Acc) -> int:
    """The number of samples folded in (the largest count of any metric)."""
    return int(max(acc[j] for j in range(0, N_METRICS * _SLOTS, _SLOTS)))


# -- encodings -----------------------------------------------------------------------------------
#
# A raw sample: u16 mask of the metrics present, then each present metric's value as float64
# (exactly what the agent sent). A rollup: u16 mask of the metrics present, u16 mask of those
# whose count differs from the bucket's, u32 bucket count (samples), then per present metric
# min, avg, max as float32, then a u32 count for each metric of the second mask. Little-endian.


@functools.lru_cache(maxsize=4096)
def _sample_struct(mask: int) -> struct.Struct:
    return struct.Struct("<H" + "d" * mask.bit_count())


@functools.lru_cache(maxsize=4096)
def _rollup_struct(mask: int, partial: int) -> struct.Struct:
    return struct.Struct("<HHI" + "fff" * mask.bit_count() + "I" * partial.bit_count())


def _bits(mask: int) -> list[int]:
    return [i for i in range(N_METRICS) if mask >> i & 1]


def pack_sample(values: Mapping[str, float]) -> bytes:
    mask = 0
    for name in values:
        i = METRIC_INDEX.get(name)
        if i is not None:
            mask |= 1 << i
    ordered = [values[METRIC_NAMES[i]] for i in _bits(mask)]
    return _sample_struct(mask).pack(mask, *ordered)


def unpack_sample(blob: bytes) -> dict[str, float]:
    if len(blob) < 2:
        raise ValueError("not a metrics sample")
    (mask,) = struct.unpack_from("<H", blob)
    values = _sample_struct(mask).unpack(blob)
    return {METRIC_NAMES[i]: v for i, v in zip(_bits(mask), values[1:], strict=True)}


def pack_rollup(acc: Acc) -> bytes:
    """A bucket's accumulator as stored (float32 min/avg/max)."""
    total = acc_samples(acc)
    mask = partial = 0
    stats: list[float] = []
    counts: list[int] = []
    for i in range(N_METRICS):
        j = i * _SLOTS
        n = acc[j]
        if not n:
            continue
        mask |= 1 << i
        stats.extend((acc[j + 2], acc[j + 1] / n, acc[j + 3]))
    for i in _bits(mask):
        n = int(acc[i * _SLOTS])
        if n != total:
            partial |= 1 << i
            counts.append(n)
    return _rollup_struct(mask, partial).pack(mask, partial, total, *stats, *counts)


def unpack_rollup(blob: bytes) -> Acc:
    """A stored bucket as an accumulator (sum = avg × count)."""
    if len(blob) < 8:
        raise ValueError("not a metrics rollup")
    mask, partial, total = struct.unpack_from("<HHI", blob)
    values = _rollup_struct(mask, partial).unpack(blob)
    present = _bits(mask)
    counts = dict(zip(_bits(partial), values[3 + 3 * len(present):], strict=True))
    acc = new_acc()
    for k, i in enumerate(present):
        lo, avg, hi = values[3 + 3 * k: 6 + 3 * k]
        n = counts.get(i, total)
        j = i * _SLOTS
        acc[j], acc[j + 1], acc[j + 2], acc[j + 3] = n, avg * n, lo, hi
    return acc


# -- the downsampler -----------------------------------------------------------------------------


@attrs.frozen
class Rollup:
    """A closed bucket of one client."""

    client_id: str
    step: int
    start: int
    acc: Acc = attrs.field(eq=False)


def bucket_start(at: float, step: int) -> int:
    """The start of the ``step``-second bucket holding time ``at`` (epoch-aligned)."""
    return math.floor(at / step) * step


class Downsampler:
    """Open buckets of every tier, for every client, in memory until their end has passed.

    Buckets are kept by tier and start (all clients share boundaries), so :meth:`close` finds
    what ended without looking at anything else. Memory: one accumulator (44 doubles) per
    client per tier for the buckets open now (two per tier briefly around a boundary).
    """

    def __init__(self, steps: Sequence[int] = ROLLUP_STEPS) -> None:
        self.steps = tuple(steps)
        self._open: dict[int, dict[int, dict[str, Acc]]] = {s: {} for s in self.steps}
        # The end of the newest bucket handed out, per tier: nothing older is opened again.
        self.closed_through: dict[int, float] = dict.fromkeys(self.steps, -math.inf)

    def add(self, client_id: str, at: float, values: Mapping[str, float]) -> None:
        """Count a sample received at ``at`` into the open bucket of each tier."""
        for step in self.steps:
            start = bucket_start(at, step)
            floor = self.closed_through[step]
            if start < floor:
                start = int(floor)
            buckets = self._open[step].get(start)
            if buckets is None:
                buckets = self._open[step][start] = {}
            acc = buckets.get(client_id)
            if acc is None:
                acc = buckets[client_id] = new_acc()
            acc_add_sample(acc, values)

    def merge(self, other: Downsampler) -> None:
        """Fold another downsampler's open buckets into these (a replay after a restart)."""
        for step in self.steps:
            for start, clients in other._open.get(step, {}).items():
                floor = self.closed_through[step]
                target_start = max(start, int(floor)) if floor > -math.inf else start
                mine = self._open[step].setdefault(target_start, {})
                for cid, acc in clients.items():
                    have = mine.get(cid)
                    if have is None:
                        mine[cid] = array("d", acc)
                    else:
                        acc_merge(have, acc)

    def close(self, now: float) -> list[Rollup]:
        """Every bucket whose end is at or before ``now``, finest tier first, oldest first;
        they are forgotten here (the caller stores them)."""
        out: list[Rollup] = []
        for step in self.steps:
            tier = self._open[step]
            ended = sorted(start for start in tier if start + step <= now)
            for start in ended:
                for cid, acc in tier.pop(start).items():
                    out.append(Rollup(cid, step, start, acc))
            # Every bucket that ends by now is over, for every client.
            self.closed_through[step] = max(self.closed_through[step], bucket_start(now, step))
        return out

    def open_buckets(self, client_id: str, step: int) -> Iterator[tuple[int, Acc]]:
        """(start, accumulator) of the client's open buckets of one tier (for queries)."""
        for start, clients in self._open.get(step, {}).items():
            acc = clients.get(client_id)
            if acc is not None:
                yield start, acc

    def forget(self, client_id: str) -> None:
        """Drop a removed client's open buckets."""
        for tier in self._open.values():
            for clients in tier.values():
                clients.pop(client_id, None)

    def open_count(self) -> int:
        return sum(len(c) for tier in self._open.values() for c in tier.values())


# -- re-bucketing for queries --------------------------------------------------------------------


@attrs.frozen
class Series:
    """A query's answer on a regular grid: bucket ``i`` is ``[start + i*step, start +
    (i+1)*step)``. ``count[i]`` is its number of samples (0: no data); ``stats[name]`` is
    ``(min, avg, max)`` lists with None where the metric has no data."""

    start: int
    step: int
    count: list[int]
    stats: dict[str, tuple[list[float | None], list[float | None], list[float | None]]]


class Grid:
    """Folds samples and stored buckets into a grid of ``n`` buckets of ``step`` seconds from
    ``start``; anything outside is ignored. A stored bucket must not straddle two grid buckets
    (the caller picks a step that is a multiple of the tier's)."""

    def __init__(self, start: int, step: int, n: int) -> None:
        self.start, self.step, self.n = start, step, n
        self._accs: dict[int, Acc] = {}

    def _slot(self, at: float) -> Acc | None:
        i = math.floor((at - self.start) / self.step)
        if not 0 <= i < self.n:
            return None
        acc = self._accs.get(i)
        if acc is None:
            acc = self._accs[i] = new_acc()
        return acc

    def add_sample(self, at: float, values: Mapping[str, float]) -> None:
        acc = self._slot(at)
        if acc is not None:
            acc_add_sample(acc, values)

    def add_bucket(self, start: float, acc: Acc) -> None:
        """Fold a stored bucket in; ``acc`` becomes the grid's own when it is the first of its
        grid bucket (do not change it afterwards)."""
        i = math.floor((start - self.start) / self.step)
        if not 0 <= i < self.n:
            return
        target = self._accs.get(i)
        if target is None:
            self._accs[i] = acc
        else:
            acc_merge(target, acc)

    def series(self, names: Iterable[str]) -> Series:
        names = list(names)
        count = [0] * self.n
        typed = {name: (_nones(self.n), _nones(self.n), _nones(self.n)) for name in names}
        for i, acc in self._accs.items():
            count[i] = acc_samples(acc)
            for name in names:
                j = METRIC_INDEX[name] * _SLOTS
                n = acc[j]
                if n:
                    lo, avg, hi = typed[name]
                    lo[i], avg[i], hi[i] = acc[j + 2], acc[j + 1] / n, acc[j + 3]
        return Series(self.start, self.step, count, typed)


def _nones(n: int) -> list[float | None]:
    return [None] * n


# -- choosing the tier of a query ----------------------------------------------------------------


# A tier still answers for a range starting this much before its retention (the page asks for
# "the last hour" a moment after the server's clock read it; pruning runs every minute or so).
COVER_SLACK_SECONDS = 300
# The longest range a query may cover (and so the largest step).
MAX_RANGE_SECONDS = 400 * 86400


class PlanError(ValueError):
    """A query that cannot be answered: ``field`` names the query parameter at fault."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@attrs.frozen
class Plan:
    """Answer from ``tier`` (0: raw samples, else a rollup step) on the grid ``start``,
    ``step``, ``n`` buckets."""

    tier: int
    start: int
    step: int
    n: int


def plan_query(retention: Mapping[int, float], now: float, start: float, end: float,
               step: int, max_points: int) -> Plan:
    """The tier that answers ``[start, end)`` at ``step`` seconds: of the tiers whose retention
    reaches back to ``start`` (else the one that reaches back furthest), the coarsest whose
    step divides ``step`` (raw samples divide any). ``retention``: seconds kept per tier (0 for
    raw; a tier kept 0 s is off). Raises :class:`PlanError` naming ``from`` (a reversed or
    empty range) or ``step`` (too small for that range, not a multiple of the tier's step, too
    many points)."""
    if not end > start:
        raise PlanError("from", "must be before to")
    if end - start > MAX_RANGE_SECONDS:
        raise PlanError("from", f"the range may span at most {MAX_RANGE_SECONDS // 86400} days")
    if step < 1:
        raise PlanError("step", "must be at least 1 second")
    if step > MAX_RANGE_SECONDS:
        raise PlanError("step", f"must be at most {MAX_RANGE_SECONDS} s")
    grid_start = math.floor(start / step) * step
    n = math.ceil((end - grid_start) / step)
    if n > max_points:
        least = math.ceil((end - grid_start) / max_points)
        raise PlanError("step", f"gives {n} points, more than {max_points}: use a step of at "
                                f"least {least} s for this range")
    tiers = sorted((t for t, kept in retention.items() if kept > 0))
    if not tiers:
        raise PlanError("from", "no metrics history is kept (history is off)")
    covering = [t for t in tiers if start >= now - retention[t] - COVER_SLACK_SECONDS]
    if not covering:
        covering = [max(tiers, key=lambda t: (retention[t], -t))]
    usable = [t for t in covering if t == 0 or step % t == 0]
    if not usable:
        finest = covering[0]
        if step < finest:
            raise PlanError("step", f"must be at least {finest} s for data from this far back "
                                    f"(the finest history kept there is {TIER_NAMES.get(finest, finest)})")
        raise PlanError("step", f"must be a multiple of {finest} s for data from this far back")
    return Plan(max(usable), grid_start, step, n)


def auto_step(retention: Mapping[int, float], now: float, start: float, end: float,
              points: int) -> int:
    """A step for ``[start, end)`` when the query names none: about ``points`` buckets, a
    multiple of the step of the finest tier that reaches back to ``start``."""
    tiers = sorted(t for t, kept in retention.items() if kept > 0)
    covering = [t for t in tiers if start >= now - retention[t]] or tiers[-1:] or [0]
    unit = max(covering[0], 1)
    want = max(1, math.ceil((end - start) / points))
    return math.ceil(want / unit) * unit
