"""Redis clients under Trio, side by side: valkey-glide (Rust core) and coredis (anyio).

Starts its own redis-server on a free loopback port (its own config and directory, AOF off so
that the server's disk is not what is measured; ``--aof`` measures with ``appendfsync
always``), then, for each client, in the same run: SET of a 300-byte value

- ``single``: one task, one command at a time;
- ``concurrent``: 32 tasks, each one command at a time;
- ``pipelined``: one task, batches of 100 commands in one round trip;

each for ``--seconds`` (default 2), three rounds, and prints the median ops/s of each, and the
client process's CPU per 1000 operations.

Run: ``.venv/bin/python bench/redis_clients.py`` (needs redis-server, valkey-glide, coredis).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.redisproc import RedisProcess  # noqa: E402

VALUE = b"x" * 300
CONCURRENCY = 32
PIPELINE_DEPTH = 100
ROUNDS = 3

Op = Callable[[int], Awaitable[int]]  # runs some commands, returns how many


async def _measure(op: Op, tasks: int, seconds: float) -> tuple[float, float]:
    """ops/s and CPU seconds per 1000 ops of ``tasks`` tasks calling ``op`` for ``seconds``."""
    done = 0
    stop_at = trio.current_time() + seconds

    async def worker(i: int) -> None:
        nonlocal done
        while trio.current_time() < stop_at:
            n = await op(i)  # not `done += await ...`: that reads done before the await
            done += n

    cpu0, t0 = time.process_time(), time.perf_counter()
    async with trio.open_nursery() as n:
        for i in range(tasks):
            n.start_soon(worker, i)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return done / elapsed, cpu / done * 1000


async def bench_glide(port: int, seconds: float) -> dict[str, list[tuple[float, float]]]:
    from glide import Batch, GlideClient, GlideClientConfiguration, NodeAddress

    client = await GlideClient.create(
        GlideClientConfiguration([NodeAddress("127.0.0.1", port)], request_timeout=5000))

    async def one(i: int) -> int:
        await client.set(f"g:{i}", VALUE)
        return 1

    async def pipe(i: int) -> int:
        batch = Batch(is_atomic=False)
        for j in range(PIPELINE_DEPTH):
            batch.set(f"g:{i}:{j}", VALUE)
        await client.exec(batch, raise_on_error=True)
        return PIPELINE_DEPTH

    try:
        return await _rounds(one, pipe, seconds)
    finally:
        await client.close()


async def bench_coredis(port: int, seconds: float) -> dict[str, list[tuple[float, float]]]:
    import coredis

    client: Any = coredis.Redis(host="127.0.0.1", port=port, max_connections=CONCURRENCY)
    async with client:
        async def one(i: int) -> int:
            await client.set(f"c:{i}", VALUE)
            return 1

        async def pipe(i: int) -> int:
            async with client.pipeline(transaction=False) as p:
                for j in range(PIPELINE_DEPTH):
                    p.set(f"c:{i}:{j}", VALUE)
            return PIPELINE_DEPTH

        return await _rounds(one, pipe, seconds)


async def _rounds(one: Op, pipe: Op, seconds: float) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {"single": [], "concurrent": [], "pipelined": []}
    await _measure(one, 4, 0.3)  # warm up connections
    for _ in range(ROUNDS):
        out["single"].append(await _measure(one, 1, seconds))
        out["concurrent"].append(await _measure(one, CONCURRENCY, seconds))
        out["pipelined"].append(await _measure(pipe, 1, seconds))
    return out


def _median(rows: list[tuple[float, float]]) -> tuple[float, float]:
    return (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows))


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="rpad-bench-redis-") as tmp:
        server = RedisProcess(Path(tmp), appendonly=args.aof)
        with server:
            results = {}
            for name, fn in (("valkey-glide", bench_glide), ("coredis", bench_coredis)):
                results[name] = await fn(server.port, args.seconds)
    print(f"SET of {len(VALUE)} bytes, median of {ROUNDS} rounds of {args.seconds:g} s, "
          f"redis-server {'AOF appendfsync always' if args.aof else 'without persistence'}")
    print(f"{'client':14} {'single':>18} {'32 concurrent':>18} {'pipelined (100)':>18}")
    for name, res in results.items():
        cells = []
        for kind in ("single", "concurrent", "pipelined"):
            rate, cpu = _median(res[kind])
            cells.append(f"{rate / 1000:7.1f}k/s {cpu * 1000:5.1f}ms")
        print(f"{name:14} " + " ".join(f"{c:>18}" for c in cells))
    print("(ms: client CPU per 1000 operations)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--aof", action="store_true", help="AOF with appendfsync always")
    trio.run(main, parser.parse_args())
