"""The benchmark tools measure what they say: the load generator counts every message (one per
frame, or several to a frame when batching) against real servers, and the suite's table shows
every row. Tiny loads, loopback only; nothing here measures or asserts performance (that is
``python bench/run.py``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import common
import console
import fanout
import run as suite
import wsload

pytestmark = pytest.mark.slow

EVENTS = 30
SUBSCRIBERS = 4


def _session_counts(kind: str, sub_url: str, pub_url: str, server_pid: int,
                    subscribe: dict[str, Any] | None) -> dict[str, Any]:
    s = fanout.Session(kind, sub_url, pub_url, SUBSCRIBERS, subscribe, server_pid)
    try:
        result = s.measure(EVENTS)
    finally:
        totals = s.close()
    return {**result, **totals}


def test_the_load_generator_counts_every_message_of_the_bare_server(tmp_path: Path) -> None:
    with common.Server([common.PYTHON, str(BENCH / "ws_servers.py"), "trio"],
                       tmp_path / "trio.log", r"listening on (?P<url>ws://\S+)") as bare:
        url = bare.group("url")
        out = _session_counts("trio", f"{url}/sub", f"{url}/pub", bare.pid, None)
    assert out["messages"] == EVENTS * SUBSCRIBERS
    assert out["frames"] == EVENTS * SUBSCRIBERS


@pytest.mark.parametrize("kind", ["rpad", "rpad-batch"])
def test_the_load_generator_counts_every_message_of_rpad(tmp_path: Path, kind: str) -> None:
    cfg = fanout.bench_rpad_config(tmp_path / "state")
    with common.Rpad(tmp_path / "rpad", cfg, lift_message_limit=True) as rpad:
        assert rpad.ws_url is not None
        viewer = rpad.token("viewer", "smoke", topics=["bench.*"])
        admin = rpad.token("admin", "smoke-publisher")
        extra = "&batch=1" if kind == "rpad-batch" else ""
        topic = f"{fanout.TOPIC}.{kind}.{SUBSCRIBERS}"
        out = _session_counts(kind, f"{rpad.ws_url}?token={viewer}{extra}",
                              f"{rpad.ws_url}?token={admin}&batch=1", rpad.pid,
                              {"action": "subscribe", "topic": topic})
    assert out["messages"] == EVENTS * SUBSCRIBERS
    if kind == "rpad":
        assert out["frames"] == EVENTS * SUBSCRIBERS
    else:
        assert out["frames"] <= EVENTS * SUBSCRIBERS


def test_frames_are_walked_across_reads() -> None:
    """A frame split over two reads, and a 126-length header, are counted once each."""
    def frame(p: bytes) -> bytes:
        if len(p) < 126:
            return bytes([0x81, len(p)]) + p
        return bytes([0x81, 126]) + len(p).to_bytes(2, "big") + p

    payloads = [b'{"seq":1}', b'{"seq":2,"x":"' + b"y" * 200 + b'"}', b'{"seq":3}\n{"seq":4}']
    server_frames = b"".join(frame(p) for p in payloads)

    class FakeSock:
        def __init__(self, chunks: list[bytes]) -> None:
            self.chunks = chunks

        def recv(self, n: int) -> bytes:
            return self.chunks.pop(0)

    conn = wsload.Conn(FakeSock([server_frames[:5], server_frames[5:150], server_frames[150:]]),  # type: ignore[arg-type]
                       b"")
    for _ in range(3):
        conn.receive()
    assert conn.messages == 4 and conn.frames == 3 and conn.last_seq == 4 and conn.buf == b""


def test_the_table_has_a_row_for_every_measure() -> None:
    nan = float("nan")
    fan = {"deliveries_per_second": 1.0, "server_cpu_us_per_delivery": 1.0, "capacity": 1.0,
           "server_cpu": 50.0, "load_cpu": 10.0, "delivered": 1, "expected": 1, "frames": 1}
    results: dict[str, Any] = {
        "ingest": {k: 1.0 for k in (
            "single_rps", "single_p50_ms", "single_p99_ms", "single_server_cpu",
            "single_wrk_cpu", "ceiling_rps", "ceiling_p50_ms", "ceiling_p99_ms",
            "ceiling_server_cpu", "ceiling_wrk_cpu", "single_ratio", "batch_hb_per_s",
            "batch_p50_ms", "batch_p99_ms", "batch_server_cpu", "batch_wrk_cpu")}
        | {"single_errors": 0, "batch_errors": 0, "batch_stored": 1, "batch_clients": 1},
        "fanout": {f"{k}/{n}": {**fan, "subscribers": n} for k in fanout.ALL_KINDS
                   for n in (100, 1000)},
        "latency": {"subscribers": 100} | {m: {k: 1.0 for k in (
            "accepted_p50_ms", "accepted_p99_ms", "sent_p50_ms", "sent_p99_ms", "rate",
            "server_cpu", "subscriber_cpu")} | {"deliveries": 1, "expected": 1}
            for m in ("plain", "batch")},
        "memory": {"connections": 2000, "rpad_kib": 30.0, "trio_kib": 20.0,
                   "rpad_rss_after_mib": 100.0},
        "fleet": {f"server_list_{n}": {"cold_ms": 1.0, "steady_ms": 1.0, "stdlib_ms": 1.0,
                                       "bytes": 1, "delta_ms": nan}
                  for n in (1000, 10_000, 100_000)}
        | {"sweep_none_ms": 1.0, "sweep_1pct_ms": 1.0, "sweep_1pct_events": 1,
           "startup": {"clients": 100_000, "full_s": 1.0, "empty_s": 0.5}},
        "detect": {"clients": 100_000} | {f"{w}_{p}_ms": 1.0 for w in ("event", "dashboard")
                                          for p in ("p50", "p99", "max")},
    }
    text = suite.table(results)
    for measure in ("1. Heartbeat over HTTP", "2. Batch ingestion", "3. Fan-out to 100 ",
                    "3. Fan-out to 1,000 subscribers", "3. Fan-out to 100, frame batching",
                    "3. Fan-out to 1,000, frame batching", "4. Latency", "5. Memory",
                    "6. SERVER_LIST for 10,000", "6. Sweep", "6. Start-up",
                    "9. Time to detect"):
        assert measure in text, measure
    assert len(text.splitlines()) == 2 + 2 + 4 + 2 + 1 + 3 + 1 + 1 + 1


def test_the_console_benchmark_counts_its_commands_and_its_task(tmp_path: Path) -> None:
    out = console.run(True, tmp_path, smoke=True)
    c = out["console"]
    assert c["commands"] == 3 and c["rtt_p50_ms"] > 0 and c["mib_per_s"] > 0
    t = out["tasks"]
    assert t["agents"] == 5 and {"c5", "c1"} <= set(t)
    assert all(t[k]["seconds"] > 0 for k in ("c5", "c1"))
    assert any("8. Console: round trip" in row[0] for row in suite.rows(
        {"console": {**out, "wide": c}}))
