"""The agent's command runner with real processes: output intact or cut at the limit, credit
flow control, the time limit and cancel killing the whole process group (checked in /proc),
processes that leave the group, the clean environment, the user switch."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio

from rpad.client import policy as policy_mod
from rpad.client.policy import CommandPolicy, CommandRefused
from rpad.client.runner import (
    CANCELLED,
    ERROR,
    SUCCESS,
    TIMEOUT,
    Execution,
    Result,
    Runner,
    find_marked,
)

MIB = 1024 * 1024


def policy(**kw: object) -> CommandPolicy:
    base: dict[str, object] = {"allow_flag": True, "allow_root_flag": True}
    base.update(kw)
    return policy_mod.build(**base)  # type: ignore[arg-type]


class Console:
    """Collects output like rpad would, granting credit back as it consumes (auto) or not."""

    def __init__(self, ex: Execution, *, auto: bool = True) -> None:
        self.ex = ex
        self.auto = auto
        self.chunks: list[tuple[str, str, int]] = []
        self.changed = trio.Event()

    async def emit(self, stream: str, text: str, nbytes: int) -> None:
        self.chunks.append((stream, text, nbytes))
        if self.auto:
            self.ex.grant(nbytes)
        self.changed.set()
        self.changed = trio.Event()

    def text(self, stream: str = "stdout") -> str:
        return "".join(t for s, t, _ in self.chunks if s == stream)

    @property
    def nbytes(self) -> int:
        return sum(n for _, _, n in self.chunks)

    async def wait_for(self, needle: str) -> None:
        while needle not in self.text():
            await self.changed.wait()


def alive(pid: int) -> bool:
    """True if the pid is a live process (a zombie is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def run(command: str, *, pol: CommandPolicy | None = None, timeout: float = 20,
              limit: int | None = None, credit: int = 65536, auto: bool = True,
              chunk: int = 8192) -> tuple[Result, Console]:
    runner = Runner(pol or policy())
    ex = runner.admit("c1", command, timeout_seconds=timeout, max_output_bytes=limit,
                      credit_bytes=credit, chunk_bytes=chunk)
    console = Console(ex, auto=auto)
    with trio.fail_after(30):
        result = await ex.run(console.emit)
    assert not runner.running
    return result, console


async def test_output_and_exit_codes() -> None:
    result, c = await run("echo hello; echo oops >&2; exit 3")
    assert c.text() == "hello\n" and c.text("stderr") == "oops\n"
    assert (result.exit_code, result.signal, result.status) == (3, None, ERROR)
    assert result.output_bytes == 11 and not result.truncated
    result, c = await run("true")
    assert (result.exit_code, result.status, c.chunks) == (0, SUCCESS, [])


async def test_one_mib_arrives_intact_in_bounded_chunks() -> None:
    expected = ("0123456789abcde\n" * (MIB // 16)).encode()
    result, c = await run("yes 0123456789abcde | head -c 1048576", chunk=8192)
    assert c.text().encode() == expected
    assert result.status == SUCCESS and not result.truncated
    assert result.output_bytes == MIB == c.nbytes
    assert max(n for _, _, n in c.chunks) <= 8192


async def test_output_cut_at_the_limit_is_marked_truncated() -> None:
    result, c = await run("yes 0123456789abcde | head -c 1048576", limit=100_000)
    assert result.truncated and result.output_bytes == 100_000
    assert c.text() == ("0123456789abcde\n" * 7000)[:100_000]
    # The writer got SIGPIPE when the agent closed its end: no need to wait for the timeout.
    assert result.duration_ms < 10_000
    # The limit counts stdout and stderr together.
    result, c = await run("head -c 3000 /dev/zero; head -c 3000 /dev/zero >&2", limit=4000)
    assert result.truncated and result.output_bytes == 4000 == c.nbytes


async def test_exactly_at_the_limit_is_not_truncated() -> None:
    result, c = await run("head -c 5000 /dev/zero | tr '\\0' x", limit=5000)
    assert not result.truncated and c.text() == "x" * 5000


async def test_no_credit_no_output_and_the_command_waits() -> None:
    """Flow control: nothing is read beyond the credit; the command blocks on its pipe."""
    runner = Runner(policy())
    ex = runner.admit("c1", "yes | head -c 3000000", timeout_seconds=20,
                      max_output_bytes=None, credit_bytes=0)
    c = Console(ex, auto=False)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            results: list[Result] = []

            async def go() -> None:
                results.append(await ex.run(c.emit))

            nursery.start_soon(go)
            await trio.sleep(0.3)
            assert c.nbytes == 0 and ex.output_bytes == 0
            ex.grant(10_000)
            while c.nbytes < 10_000:
                await c.changed.wait()
            await trio.sleep(0.2)
            assert c.nbytes == 10_000  # never more than granted
            assert not results  # still blocked on its pipe
            ex.grant(20_000_000)
        assert results[0].status == SUCCESS and c.nbytes == 3_000_000


async def test_utf8_split_across_chunks_is_kept_whole() -> None:
    result, c = await run("printf 'h\\303\\251llo \\342\\202\\254\\n'", chunk=1)
    assert c.text() == "héllo €\n" and result.output_bytes == 11
    result, c = await run("printf 'bad \\377 byte\\n'")
    assert c.text() == "bad \ufffd byte\n"


async def test_timeout_kills_the_whole_process_group() -> None:
    command = "sleep 300 & echo $!; sh -c 'sleep 301 & echo $!; sleep 302'"
    runner = Runner(policy())
    ex = runner.admit("c1", command, timeout_seconds=1.0, max_output_bytes=None,
                      credit_bytes=65536)
    c = Console(ex)
    with trio.fail_after(30):
        result = await ex.run(c.emit)
    pids = [int(x) for x in c.text().split()]
    assert len(pids) == 2
    assert result.status == TIMEOUT and result.exit_code is None
    assert result.signal == signal.SIGKILL
    assert 900 <= result.duration_ms < 10_000
    assert ex.pid is not None
    for pid in [ex.pid, *pids]:
        assert not alive(pid), pid
    assert find_marked(ex.marker) == []
    assert not _group_members(ex.pid)


def _group_members(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


async def test_leftovers_are_killed_when_the_command_exits() -> None:
    """A background child and a daemon that left the group with setsid do not outlive it."""
    command = ("sleep 300 > /dev/null 2>&1 & echo $!; "
               "setsid sh -c 'echo $$; exec sleep 303' > /tmp/rpad-test-$$ 2>&1 & sleep 0.3; "
               "cat /tmp/rpad-test-$$; rm -f /tmp/rpad-test-$$")
    result, c = await run(command, timeout=60)
    assert result.status == SUCCESS, c.text("stderr")
    assert result.duration_ms < 30_000
    pids = [int(x) for x in c.text().split()]
    assert len(pids) == 2
    for pid in pids:
        assert not alive(pid), pid


async def test_cancel_sends_sigint_then_sigkill_after_the_grace() -> None:
    for command, expect_kill in (("echo started; sleep 300", False),
                                 ("trap '' INT; echo started; sleep 300; echo survived", True)):
        runner = Runner(policy(file_table={"kill_grace_seconds": 0.5}))
        ex = runner.admit("c1", command, timeout_seconds=60, max_output_bytes=None,
                          credit_bytes=65536)
        c = Console(ex)
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                results: list[Result] = []

                async def go(ex: Execution = ex, c: Console = c,
                             results: list[Result] = results) -> None:
                    results.append(await ex.run(c.emit))

                nursery.start_soon(go)
                await c.wait_for("started")
                # Let the shell start sleep: dash keeps a SIGINT that arrives between two
                # commands pending and runs the next one anyway (then SIGKILL ends it).
                await trio.sleep(0.2)
                t0 = trio.current_time()
                ex.cancel()
        elapsed = trio.current_time() - t0
        result = results[0]
        assert result.status == CANCELLED
        assert "survived" not in c.text()
        if expect_kill:
            assert result.signal == signal.SIGKILL and elapsed >= 0.5
        else:
            assert elapsed < 0.5
        assert ex.pid is not None and not _group_members(ex.pid)


async def test_outside_cancellation_kills_the_group() -> None:
    """The channel was lost: the run is cancelled from outside and leaves nothing behind."""
    runner = Runner(policy())
    ex = runner.admit("c1", "sleep 300 & echo $!; sleep 301", timeout_seconds=60,
                      max_output_bytes=None, credit_bytes=65536)
    c = Console(ex)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:

            async def go() -> None:
                await ex.run(c.emit)

            nursery.start_soon(go)
            await c.wait_for("\n")
            nursery.cancel_scope.cancel()
    child = int(c.text().split()[0])
    assert ex.pid is not None
    assert not alive(child) and not alive(ex.pid)
    assert not runner.running


async def test_allowlist_runs_without_a_shell() -> None:
    pol = policy(patterns=["echo **", "printf *"])
    result, c = await run("echo a; id", pol=pol)
    assert c.text() == "a; id\n" and result.status == SUCCESS
    with pytest.raises(CommandRefused) as info:
        Runner(pol).admit("c1", "id", timeout_seconds=None, max_output_bytes=None,
                          credit_bytes=0)
    assert info.value.code == "not_allowed"


async def test_missing_program_is_exit_127() -> None:
    result, c = await run("no-such-program-rpad arg", pol=policy(patterns=["no-such-* *"]))
    assert (result.exit_code, result.status) == (127, ERROR)
    assert "cannot run no-such-program-rpad" in c.text("stderr")


async def test_the_environment_is_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPAD_TOKEN", "secret-agent-token")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/rpad-agent.service")
    result, c = await run("env")
    env = dict(line.split("=", 1) for line in c.text().splitlines())
    assert "RPAD_TOKEN" not in env and "CREDENTIALS_DIRECTORY" not in env
    assert env["TERM"] == "dumb" and "RPAD_COMMAND_ID" in env
    assert result.status == SUCCESS


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_run_as_another_user() -> None:
    pol = policy_mod.build(allow_flag=True, run_as="nobody")
    assert pol.switch_user and pol.run_as is not None and pol.run_as.uid == 65534
    result, c = await run("id -u; id -g; echo $HOME $USER; pwd", pol=pol)
    assert result.status == SUCCESS, c.text("stderr")
    lines = c.text().splitlines()
    assert lines[0] == "65534" and lines[2].split()[1] == "nobody"
    assert lines[3] == "/"  # nobody's home does not exist


async def test_concurrency_cap() -> None:
    runner = Runner(policy(file_table={"max_concurrent": 1}))
    runner.admit("c1", "true", timeout_seconds=None, max_output_bytes=None, credit_bytes=0)
    with pytest.raises(CommandRefused) as info:
        runner.admit("c2", "true", timeout_seconds=None, max_output_bytes=None,
                     credit_bytes=0)
    assert info.value.code == "busy"


async def test_disabled_by_default() -> None:
    with pytest.raises(CommandRefused) as info:
        Runner(CommandPolicy()).admit("c1", "true", timeout_seconds=None,
                                      max_output_bytes=None, credit_bytes=0)
    assert info.value.code == "commands_disabled"


async def test_limits_are_the_owners_maximum() -> None:
    runner = Runner(policy(file_table={"max_timeout_seconds": 5, "max_output_bytes": 1000}))
    ex = runner.admit("c1", "true", timeout_seconds=3600, max_output_bytes=10**9,
                      credit_bytes=0)
    assert (ex.timeout_seconds, ex.max_output_bytes) == (5, 1000)
    ex = runner.admit("c2", "true", timeout_seconds=2, max_output_bytes=10,
                      credit_bytes=0)
    assert (ex.timeout_seconds, ex.max_output_bytes) == (2, 10)
