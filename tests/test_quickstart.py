"""The README's first commands, as a newcomer runs them: in a fresh copy of this checkout, a
fresh virtualenv from the lock file, `rpad serve` on its default ports, a token, and the
heartbeat example, all exactly as written in the README. Also: `.ci/run` runs the README's test
command, and the lock files pin every package with its hashes.

The default ports (8000, 8001) may be taken on a developer's machine, so `rpad serve` and the
example run in a network namespace of their own (``unshare --net``, as root) with only a
loopback interface; the install before them runs in the machine's own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from .conftest import IN_CI

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
INSTALL_TIMEOUT_SECONDS = 600
RUN_TIMEOUT_SECONDS = 90
# A `date`-made timestamp has whole seconds: the skew of a heartbeat sent at once is under 1 s.
MAX_SANE_SKEW_SECONDS = 5.0


def sh_blocks() -> list[str]:
    """The README's ```sh blocks, in order."""
    return re.findall(r"```sh\n(.*?)```", README.read_text(), re.DOTALL)


def output_after(block: str) -> str:
    """The plain ``` block that follows a ```sh block in the README (its shown output)."""
    text = README.read_text()
    rest = text[text.index(block) + len(block):]
    m = re.match(r"```\n```\n(.*?)```", rest, re.DOTALL)
    assert m, "the heartbeat example is followed by its output"
    return m.group(1)


def quick_start() -> tuple[str, str, str]:
    """(install and serve, the test command, the heartbeat example)."""
    blocks = sh_blocks()
    assert len(blocks) >= 3, blocks
    serve, test, heartbeat = blocks[0].strip(), blocks[1].strip(), blocks[2]
    assert serve.endswith("&& .venv/bin/rpad serve"), serve
    return serve, test, heartbeat


def test_ci_runs_the_readme_test_command() -> None:
    _, test_command, _ = quick_start()
    lines = [ln for ln in (REPO / ".ci" / "run").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines[-1] == test_command
    assert "--require-hashes -r requirements/dev.txt" in test_command


def locked(path: Path) -> dict[str, str]:
    """name → version of a lock file; every requirement pinned with ``==`` and hashes."""
    pins: dict[str, str] = {}
    for entry in re.split(r"\n(?=[a-z0-9])", path.read_text()):
        head = entry.split("\\", 1)[0].strip()
        if not head or head.startswith("#"):
            continue
        m = re.fullmatch(r"([a-z0-9][a-z0-9._-]*)==(\S+)(?: ; .*)?", head)
        assert m, f"{path.name}: not pinned exactly: {head!r}"
        assert "--hash=sha256:" in entry, f"{path.name}: {head} has no hash"
        pins[m.group(1)] = m.group(2)
    return pins


def requirement_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def test_lock_files_pin_everything_pyproject_asks_for() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    server = locked(REPO / "requirements" / "server.txt")
    dev = locked(REPO / "requirements" / "dev.txt")
    assert requirement_names(project["dependencies"]) <= set(server)
    extras = project["optional-dependencies"]
    assert requirement_names(project["dependencies"] + extras["test"] + extras["bench"]) <= set(dev)
    # The server's lock is the dev lock without the test and bench packages: same versions.
    assert {name: dev[name] for name in server} == server
    # A cluster node's lock: the server's plus the cluster extra, at the dev lock's versions.
    cluster = locked(REPO / "requirements" / "cluster.txt")
    assert requirement_names(project["dependencies"] + extras["cluster"]) <= set(cluster)
    assert set(server) <= set(cluster)
    assert {name: dev[name] for name in cluster} == cluster
    # rpad/hub/wire.py uses trio-websocket's internals: exactly the release tests/test_wire.py
    # checks, in pyproject.toml and in both locks.
    pinned = next(r for r in project["dependencies"] if r.startswith("trio-websocket"))
    version = pinned.split("==")[1]
    assert server["trio-websocket"] == dev["trio-websocket"] == version


def fresh_copy(dest: Path) -> None:
    """The files git tracks in this checkout (with their working-tree contents), committed in a
    new repository: what a fresh clone holds, so `git status` shows what the commands leave."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "fresh"]):
        subprocess.run([*git, *args], cwd=dest, check=True, capture_output=True)


def own_network_namespace() -> list[str]:
    """The command prefix that runs a script in a new network namespace with loopback up."""
    if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip"):
        return ["unshare", "--net", "--", "bash", "-c"]
    reason = "running rpad serve on its default ports in a namespace of its own needs root"
    if IN_CI:
        pytest.fail(f"{reason}: required in CI")
    pytest.skip(reason)


def test_the_readme_quick_start_as_written(tmp_path: Path) -> None:
    prefix = own_network_namespace()
    serve, _, heartbeat = quick_start()
    install, _, serve_command = serve.rpartition(" && ")
    repo = tmp_path / "rpad"
    repo.mkdir()
    fresh_copy(repo)
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "STATE_DIRECTORY", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET",
                        "PYTHONPATH")}

    res = subprocess.run(["bash", "-c", install], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=INSTALL_TIMEOUT_SECONDS, check=False)
    assert res.returncode == 0, f"{install}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"

    # rpad serve, as written, in the background (stdout to a file: not a terminal); once it
    # says where it listens, the heartbeat example as written; then Ctrl-C.
    script = f"""
ip link set lo up
{serve_command} > serve.out 2> serve.err &
serve=$!
for _ in $(seq 300); do grep -q dashboard serve.out && break; sleep 0.1; done
grep -q dashboard serve.out || {{ cat serve.out serve.err; exit 99; }}
{{
{heartbeat}
}} > heartbeat.out
status=$?
kill -INT $serve
wait $serve
echo "serve exited $?" >> serve.out
exit $status
"""
    res = subprocess.run([*prefix, script], cwd=repo, env=env, capture_output=True, text=True,
                         timeout=RUN_TIMEOUT_SECONDS, check=False)
    out = (repo / "serve.out").read_text() if (repo / "serve.out").exists() else ""
    errors = (repo / "serve.err").read_text() if (repo / "serve.err").exists() else ""
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{out}\n{errors}"
    assert "serve exited 0" in out, out + errors
    # Where it listens is said once.
    assert out.count("http://127.0.0.1:8000") == 1, out
    assert "127.0.0.1:8000" not in errors, errors

    # The answer has the fields the README shows, and a sane clock skew.
    answer = json.loads((repo / "heartbeat.out").read_text())
    shown = json.loads(output_after(heartbeat))
    assert set(answer) == set(shown)
    assert (answer["clientId"], answer["status"]) == ("1", "online")
    assert abs(answer["clockSkewSeconds"]) < MAX_SANE_SKEW_SECONDS, answer
    assert abs(shown["clockSkewSeconds"]) < MAX_SANE_SKEW_SECONDS, shown

    # What the commands made stays out of git's way, and the token is the user's alone.
    for name in ("serve.out", "serve.err", "heartbeat.out"):
        (repo / name).unlink()
    tokens = list((repo / "rpad-data").glob("*.token"))
    assert tokens and all(t.stat().st_mode & 0o077 == 0 for t in tokens), tokens
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=repo,
                            capture_output=True, text=True, check=True).stdout
    assert status == "", status
