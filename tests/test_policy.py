"""The host owner's command policy: off by default, the allowlist's word matching, root
refused unless allowed, the configuration file's keys and permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rpad.client import policy as policy_mod
from rpad.client.policy import AllowPattern, CommandPolicy, CommandRefused, PolicyError


def refused(pol: CommandPolicy, command: str) -> str:
    with pytest.raises(CommandRefused) as info:
        pol.plan(command)
    return info.value.code


def test_off_unless_turned_on() -> None:
    assert refused(CommandPolicy(), "true") == "commands_disabled"
    assert refused(policy_mod.build(allow_root_flag=True), "true") == "commands_disabled"
    assert not policy_mod.build(allow_root_flag=True).capabilities()["commands"]


def test_without_allowlist_the_shell_runs_the_line() -> None:
    pol = policy_mod.build(allow_flag=True, allow_root_flag=True)
    assert pol.plan("ls | wc -l") == ["/bin/sh", "-c", "ls | wc -l"]
    assert pol.capabilities()["shell"] is True


@pytest.mark.parametrize(("pattern", "command", "ok"), [
    ("uptime", "uptime", True),
    ("uptime", "uptime -p", False),
    ("systemctl status *", "systemctl status nginx", True),
    ("systemctl status *", "systemctl status nginx; reboot", False),
    ("systemctl status *", "systemctl status 'nginx; reboot'", True),  # one argument, no shell
    ("systemctl status *", "systemctl restart nginx", False),
    ("systemctl status *", "systemctl status", False),
    ("journalctl -u * -n *", "journalctl -u nginx -n 50", True),
    ("journalctl -u * -n *", "journalctl -u nginx -n 50 -f", False),
    ("ls **", "ls", True),
    ("ls **", "ls -l /var/log /tmp", True),
    ("ls **", "lsblk", False),
    ("df -[hH]", "df -h", True),
    ("df -[hH]", "df -k", False),
    ("Echo", "echo", False),
])
def test_allowlist_matches_word_by_word(pattern: str, command: str, ok: bool) -> None:
    pol = policy_mod.build(allow_flag=True, allow_root_flag=True, patterns=[pattern])
    if ok:
        assert pol.plan(command)[0] != "/bin/sh"
    else:
        assert refused(pol, command) == "not_allowed"


def test_bad_commands_and_patterns() -> None:
    pol = policy_mod.build(allow_flag=True, allow_root_flag=True, patterns=["echo **"])
    assert refused(pol, "") == "invalid_command"
    assert refused(pol, "   ") == "invalid_command"
    assert refused(pol, "echo 'unbalanced") == "invalid_command"
    assert refused(pol, "echo a\x00b") == "invalid_command"
    assert refused(pol, "echo " + "x" * 9000) == "invalid_command"
    for bad in ("", "** rm", "ls ** -l", "echo 'x"):
        with pytest.raises(PolicyError):
            AllowPattern.parse(bad)


def test_root_is_refused_unless_allowed() -> None:
    with pytest.raises(PolicyError, match="--run-as USER"):
        policy_mod.build(allow_flag=True, euid=0)
    with pytest.raises(PolicyError, match="--allow-root"):
        policy_mod.build(allow_flag=True, run_as="root", euid=0)
    # Disabled commands need no decision about root.
    policy_mod.build(euid=0)
    pol = policy_mod.build(allow_flag=True, run_as="nobody", euid=0)
    assert pol.switch_user and pol.run_as is not None and pol.run_as.name == "nobody"
    assert pol.capabilities()["runAs"] == "nobody"
    # Only root can switch to another user.
    with pytest.raises(PolicyError, match="only an agent running as root"):
        policy_mod.build(allow_flag=True, run_as="root", allow_root_flag=True, euid=1234)
    with pytest.raises(PolicyError, match="no such user"):
        policy_mod.build(allow_flag=True, run_as="no-such-user-rpad", euid=0)


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_file_turns_commands_on_with_limits(tmp_path: Path) -> None:
    f = write(tmp_path / "agent.toml", """
[commands]
allow = true
allowlist = ["uptime", "df -h"]
run_as = "nobody"
max_timeout_seconds = 30
max_output_bytes = 65536
max_concurrent = 2
kill_grace_seconds = 1.5
""")
    table = policy_mod.read_file(f, euid=os.geteuid())
    pol = policy_mod.build(file_table=table, patterns=["id"], euid=0)
    assert pol.enabled and [p.text for p in pol.allowlist] == ["uptime", "df -h", "id"]
    assert (pol.max_timeout_seconds, pol.max_output_bytes, pol.max_concurrent,
            pol.kill_grace_seconds) == (30.0, 65536, 2, 1.5)
    assert pol.run_as is not None and pol.run_as.name == "nobody"


@pytest.mark.parametrize(("text", "message"), [
    ("[commands]\nallow = 'yes'\n", "commands.allow"),
    ("[commands]\nalow = true\n", "unknown key commands.alow"),
    ("[commands]\nmax_output_bytes = 0\n", "max_output_bytes"),
    ("[commands]\nmax_concurrent = true\n", "max_concurrent"),
    ("[commands]\nallowlist = [1]\n", "allowlist"),
    ("[commands]\nkill_grace_seconds = -1\n", "kill_grace_seconds"),
    ("commands = 3\n", "must be a table"),
    ("[commands\n", "not valid TOML"),
])
def test_file_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    f = write(tmp_path / "agent.toml", text)
    with pytest.raises(PolicyError, match=message):
        policy_mod.build(file_table=policy_mod.read_file(f, euid=os.geteuid()), euid=0)


def test_file_others_can_write_is_refused(tmp_path: Path) -> None:
    f = write(tmp_path / "agent.toml", "[commands]\nallow = true\n", 0o664)
    with pytest.raises(PolicyError, match="writable by its group or by others"):
        policy_mod.read_file(f)
    f.chmod(0o644)
    assert policy_mod.read_file(f, euid=os.geteuid()) == {"allow": True}
    with pytest.raises(PolicyError, match="must belong to root or"):
        policy_mod.check_file_safe(f, _fake_owner(f, 4242), 1000)
    policy_mod.check_file_safe(f, _fake_owner(f, 0), 1000)  # root's file is fine
    policy_mod.check_file_safe(f, _fake_owner(f, 1000), 1000)  # so is the agent user's
    with pytest.raises(PolicyError, match="cannot read"):
        policy_mod.read_file(tmp_path / "missing.toml")


def _fake_owner(path: Path, uid: int) -> os.stat_result:
    st = os.stat(path)
    fields = list(st)
    fields[4] = uid  # st_uid
    return os.stat_result(fields)
