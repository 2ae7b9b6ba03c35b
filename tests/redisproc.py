"""Real ``redis-server`` processes for tests and benchmarks, never the system service.

Each :class:`RedisProcess` runs Debian's ``redis-server`` on a free loopback port with a config
file written here: its own directory, AOF on with ``appendfsync always`` (unless asked
otherwise), no RDB snapshots, no protected mode games. It can be stopped (SHUTDOWN-like
SIGTERM), killed with ``kill -9``, restarted on the same port from the same AOF, frozen
(SIGSTOP: the socket stays open but nothing answers) and kept down for a while.

Resource handling: the process is ours (``subprocess.Popen``); :meth:`RedisProcess.close`
(and the ``redis_server`` fixture) kills it. Files stay in the directory the caller gave.
Error handling: a server that does not answer PING within :data:`START_TIMEOUT_SECONDS`
raises :class:`RuntimeError` with the tail of its log.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from .conftest import need_tool

START_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """One redis-server on 127.0.0.1:``port`` with its config and AOF in ``directory``."""

    def __init__(self, directory: Path, *, port: int | None = None, appendfsync: str = "always",
                 appendonly: bool = True, password: str | None = None,
                 executable: str = "redis-server") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.password = password
        self.executable = executable
        self.config_path = self.directory / "redis.conf"
        self.log_path = self.directory / "redis.log"
        lines = [
            "bind 127.0.0.1",
            f"port {self.port}",
            f"dir {self.directory}",
            "daemonize no",
            f"logfile {self.log_path}",
            'save ""',
            f"appendonly {'yes' if appendonly else 'no'}",
            f"appendfsync {appendfsync}",
            "appendfilename appendonly.aof",
            "protected-mode yes",
            "databases 1",
        ]
        if password is not None:
            lines.append(f"requirepass {password}")
        self.config_path.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start (or restart, from the same AOF) and wait until it answers PING."""
        assert not self.running, "already running"
        self.proc = subprocess.Popen([self.executable, str(self.config_path)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self.ping():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer PING:\n{self.log_tail()}")
            time.sleep(0.02)

    def ping(self) -> bool:
        """True when the server answers PING (a loading server answers -LOADING: not yet)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                cmd = b"PING\r\n"
                if self.password:
                    pw = self.password.encode()
                    cmd = (b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(pw), pw)) + cmd
                s.sendall(cmd)
                data = b""
                answers = 2 if self.password else 1  # one line each
                while data.count(b"\r\n") < answers:
                    chunk = s.recv(100)
                    if not chunk:
                        return False
                    data += chunk
                    if data.startswith(b"-"):
                        return False  # -LOADING, -NOAUTH, ...
                return data.rstrip().endswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """A clean stop (SIGTERM: redis-server fsyncs and exits)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """``kill -9``: no shutdown work at all; only what is in the AOF survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen process must be able to die
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: connections stay open, nothing answers (a hung Redis)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    async def down_for(self, seconds: float, *, kill: bool = False) -> None:
        """Stop (or ``kill -9``) now, stay down for ``seconds`` (trio time), start again."""
        if kill:
            self.kill()
        else:
            await trio.to_thread.run_sync(self.stop)
        await trio.sleep(seconds)
        await trio.to_thread.run_sync(self.start)

    def close(self) -> None:
        self.kill()

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_redis(directory: Path, **kwargs: object) -> RedisProcess:
    """A started :class:`RedisProcess` (needs redis-server: skipped locally, failed in CI)."""
    executable = need_tool("redis-server")
    proc = RedisProcess(directory, executable=executable, **kwargs)  # type: ignore[arg-type]
    proc.start()
    return proc


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A fresh redis-server (AOF, appendfsync always) on a free loopback port."""
    proc = start_redis(tmp_path / "redis")
    try:
        yield proc
    finally:
        proc.close()


__all__ = ["RedisProcess", "free_port", "redis_server", "start_redis"]


class CuttableLink:
    """A TCP forwarder from a loopback port to Redis that the test can cut (every connection
    closed, new ones refused at once) and mend: a network fault between one rpad node and
    Redis, while the others still reach it. It runs its own Trio loop in a thread (glide
    connects synchronously, blocking the test's loop meanwhile).

    Resource handling: :meth:`start` starts the thread; :meth:`close` stops it.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.cut = False
        self._streams: set[trio.SocketStream] = set()
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the forwarder did not start"

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._scope:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            self._ready.set()
            await trio.serve_listeners(self._serve, listeners)

    async def _serve(self, client: trio.SocketStream) -> None:
        if self.cut:
            await client.aclose()
            return
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await client.aclose()
            return
        self._streams |= {client, upstream}

        async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
            try:
                async for data in src:
                    await dst.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                await dst.aclose()

        try:
            async with trio.open_nursery() as n:
                n.start_soon(pump, client, upstream)
                n.start_soon(pump, upstream, client)
        finally:
            self._streams -= {client, upstream}

    async def _cut(self) -> None:
        self.cut = True
        for s in list(self._streams):
            await s.aclose()

    def cut_now(self) -> None:
        trio.from_thread.run(self._cut, trio_token=self._token)

    def mend(self) -> None:
        self.cut = False

    def close(self) -> None:
        if self._scope is not None and self._token is not None and self._thread is not None:
            self._token.run_sync_soon(self._scope.cancel)
            self._thread.join(10)
