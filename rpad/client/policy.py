"""What the host's owner allows the console to run on this host: the command policy.

Commands are **off** unless the owner turned them on, on this host: ``rpad agent
--allow-commands`` or ``allow = true`` in the ``[commands]`` table of the agent's local
configuration file (``--config``). The policy is read once at start from those two sources
only; nothing the agent receives from rpad can change it (there is no code path that would).

The owner narrows it further:

- an **allowlist** of command patterns (``--allow-command PATTERN``, ``allowlist = [...]``).
  With an allowlist a command is split into words like a shell would (``shlex``) and run
  *without* a shell, so ``;``, ``|``, ``$(...)`` and redirections are plain characters of an
  argument. A pattern is split the same way; a command matches when it has as many words as
  the pattern and each word matches its pattern word (``fnmatch``, case-sensitive: ``*``,
  ``?``, ``[abc]`` within the word), except that a last pattern word ``**`` matches any number
  of remaining words (none included). ``systemctl status *`` allows ``systemctl status nginx``
  but not ``systemctl status nginx; reboot`` (the ``;`` is part of an argument, and there are
  more words than in the pattern). Without an allowlist the command line is given to
  ``/bin/sh -c``.
- **run as** another user (``--run-as USER``): the child process drops to that user's uid, gid
  and supplementary groups before it executes anything. A command never runs as root unless
  the owner said so with ``--allow-root`` (``allow_root = true``): an agent running as root
  with commands allowed must be given ``--run-as`` a non-root user or ``--allow-root``, and
  ``--run-as root`` needs ``--allow-root`` too. The agent refuses to start otherwise.

Limits the owner may set (rpad may ask for less, never for more): ``max_timeout_seconds``
(default 600), ``max_output_bytes`` (default 4 MiB), ``max_concurrent`` commands (default 4) and
``kill_grace_seconds`` (default 5, from SIGINT to SIGKILL on a cancel).

Error handling: a bad option or configuration file raises :class:`PolicyError` naming the
option or key and why; the agent prints it and exits 2. A command the policy refuses raises
:class:`CommandRefused` with a code the console shows: ``commands_disabled``, ``not_allowed``,
``invalid_command``.

The configuration file must not be writable by anyone but its owner, who must be root or the
user the agent runs as (like sshd's ``StrictModes``): a file that others can edit would let them
switch commands on.
"""

from __future__ import annotations

import fnmatch
import os
import pwd
import shlex
import stat
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

DEFAULT_MAX_TIMEOUT_SECONDS = 600.0
DEFAULT_MAX_OUTPUT_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_CONCURRENT = 4
DEFAULT_KILL_GRACE_SECONDS = 5.0
# The per-command timeout when rpad does not ask for one.
DEFAULT_TIMEOUT_SECONDS = 60.0
MAX_COMMAND_CHARS = 8192
SHELL_PATH = "/bin/sh"
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Refusal codes (sent to rpad, shown in the console).
COMMANDS_DISABLED = "commands_disabled"
NOT_ALLOWED = "not_allowed"
INVALID_COMMAND = "invalid_command"
BUSY = "busy"


class PolicyError(ValueError):
    """The owner's options or configuration file are not usable; ``str()`` says which and why."""


class CommandRefused(Exception):
    """This host will not run this command. ``code`` is one of the refusal codes above."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@attrs.frozen
class AllowPattern:
    """One allowlist entry: its text and its words."""

    text: str
    words: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> AllowPattern:
        try:
            words = tuple(shlex.split(text))
        except ValueError as exc:
            raise PolicyError(f"allowlist pattern {text!r}: {exc}") from None
        if not words:
            raise PolicyError("an allowlist pattern must not be empty")
        if "**" in words[:-1]:
            raise PolicyError(f"allowlist pattern {text!r}: ** is only allowed as the last word")
        if words[0] == "**":
            raise PolicyError(f"allowlist pattern {text!r}: the program must be named, not **")
        return cls(text, words)

    def matches(self, argv: Sequence[str]) -> bool:
        words = self.words
        if words[-1] == "**":
            words = words[:-1]
            if len(argv) < len(words):
                return False
        elif len(argv) != len(words):
            return False
        return all(fnmatch.fnmatchcase(arg, pat) for arg, pat in zip(argv, words, strict=False))


@attrs.frozen
class RunAs:
    """The user commands run as (resolved once at start)."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str

    @classmethod
    def resolve(cls, name: str) -> RunAs:
        try:
            pw = pwd.getpwnam(name) if not name.isdigit() else pwd.getpwuid(int(name))
        except KeyError:
            raise PolicyError(f"--run-as {name}: no such user on this host") from None
        groups = tuple(sorted(set(os.getgrouplist(pw.pw_name, pw.pw_gid))))
        return cls(pw.pw_name, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir, pw.pw_shell)

    @classmethod
    def current(cls) -> RunAs:
        uid = os.geteuid()
        try:
            pw = pwd.getpwuid(uid)
        except KeyError:  # a uid without a passwd entry (containers, DynamicUser)
            return cls(str(uid), uid, os.getegid(), tuple(os.getgroups()), "/", SHELL_PATH)
        return cls(pw.pw_name, uid, os.getegid(), tuple(os.getgroups()), pw.pw_dir,
                   pw.pw_shell)


@attrs.frozen
class CommandPolicy:
    """What this host allows. ``switch_user`` is set when the child must change its user
    (``--run-as`` a user other than the agent's own)."""

    enabled: bool = False
    allowlist: tuple[AllowPattern, ...] = ()
    run_as: RunAs | None = None
    switch_user: bool = False
    allow_root: bool = False
    max_timeout_seconds: float = DEFAULT_MAX_TIMEOUT_SECONDS
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    kill_grace_seconds: float = DEFAULT_KILL_GRACE_SECONDS

    def plan(self, command: str) -> list[str]:
        """The argv to execute for ``command``, or CommandRefused."""
        if not self.enabled:
            raise CommandRefused(COMMANDS_DISABLED,
                                 "commands are disabled on this host: its owner did not start "
                                 "the agent with --allow-commands")
        if not isinstance(command, str) or not command.strip():
            raise CommandRefused(INVALID_COMMAND, "the command is empty")
        if len(command) > MAX_COMMAND_CHARS:
            raise CommandRefused(INVALID_COMMAND,
                                 f"the command is longer than {MAX_COMMAND_CHARS} characters")
        if "\x00" in command:
            raise CommandRefused(INVALID_COMMAND, "the command contains a NUL character")
        if not self.allowlist:
            return [SHELL_PATH, "-c", command]
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise CommandRefused(INVALID_COMMAND, f"the command cannot be split into words: "
                                 f"{exc}") from None
        if not argv:
            raise CommandRefused(INVALID_COMMAND, "the command is empty")
        if not any(p.matches(argv) for p in self.allowlist):
            raise CommandRefused(NOT_ALLOWED, "this host's allowlist does not allow this command")
        return argv

    def capabilities(self) -> dict[str, Any]:
        """What the agent advertises to rpad (shown in the client view and the console)."""
        return {
            "commands": self.enabled,
            "pty": False,
            "shell": self.enabled and not self.allowlist,
            "allowlist": [p.text for p in self.allowlist] if self.enabled else [],
            "runAs": self.run_as.name if self.enabled and self.run_as else None,
            "maxTimeoutSeconds": self.max_timeout_seconds,
            "maxOutputBytes": self.max_output_bytes,
            "maxConcurrent": self.max_concurrent,
        }


# -- building the policy from the owner's options and file ---------------------------------------

_FILE_KEYS = {"allow", "allowlist", "run_as", "allow_root", "max_timeout_seconds",
              "max_output_bytes", "max_concurrent", "kill_grace_seconds"}


def check_file_safe(path: Path, st: os.stat_result, euid: int) -> None:
    """Refuse a configuration file others could edit to switch commands on."""
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PolicyError(f"{path}: the file is writable by its group or by others "
                          f"(mode {stat.S_IMODE(st.st_mode):o}); it can switch commands on, so "
                          "only its owner may write it (chmod go-w)")
    if st.st_uid not in (0, euid):
        raise PolicyError(f"{path}: the file belongs to uid {st.st_uid}; it must belong to root "
                          "or to the user the agent runs as")


def read_file(path: Path, *, euid: int | None = None) -> dict[str, Any]:
    """The ``[commands]`` table of the agent's configuration file (other tables are left to
    their readers); PolicyError if it cannot be read, is unsafe, or has unknown keys."""
    try:
        with path.open("rb") as f:
            check_file_safe(path, os.fstat(f.fileno()), os.geteuid() if euid is None else euid)
            data = tomllib.load(f)
    except OSError as exc:
        raise PolicyError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: not valid TOML: {exc}") from None
    table = data.get("commands", {})
    if not isinstance(table, dict):
        raise PolicyError(f"{path}: commands must be a table")
    unknown = sorted(set(table) - _FILE_KEYS)
    if unknown:
        raise PolicyError(f"{path}: unknown key commands.{unknown[0]}")
    return table


def _typed(table: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = table.get(key, default)
    if isinstance(value, bool) and kind is not bool:
        raise PolicyError(f"commands.{key} must be a number, got {value!r}")
    if not isinstance(value, kind):
        raise PolicyError(f"commands.{key} has the wrong type: {value!r}")
    return value


def build(*, allow_flag: bool = False, patterns: Sequence[str] = (), run_as: str | None = None,
          allow_root_flag: bool = False, file_table: dict[str, Any] | None = None,
          euid: int | None = None) -> CommandPolicy:
    """The policy from the command line and the file's ``[commands]`` table (the flags turn
    things on in addition to the file; ``--run-as`` replaces the file's ``run_as``).

    Raises PolicyError for impossible values and for a root policy the owner did not allow."""
    t = file_table or {}
    enabled = allow_flag or _typed(t, "allow", bool, False)
    allow_root = allow_root_flag or _typed(t, "allow_root", bool, False)
    file_patterns = _typed(t, "allowlist", list, [])
    if not all(isinstance(p, str) for p in file_patterns):
        raise PolicyError("commands.allowlist must be a list of strings")
    allowlist = tuple(AllowPattern.parse(p) for p in [*file_patterns, *patterns])
    user = run_as if run_as is not None else _typed(t, "run_as", str, "") or None
    max_timeout = float(_typed(t, "max_timeout_seconds", (int, float),
                               DEFAULT_MAX_TIMEOUT_SECONDS))
    max_output = _typed(t, "max_output_bytes", int, DEFAULT_MAX_OUTPUT_BYTES)
    max_concurrent = _typed(t, "max_concurrent", int, DEFAULT_MAX_CONCURRENT)
    grace = float(_typed(t, "kill_grace_seconds", (int, float), DEFAULT_KILL_GRACE_SECONDS))
    if not 0 < max_timeout <= 86400:
        raise PolicyError("commands.max_timeout_seconds must be more than 0 and at most 86400")
    if not 0 < max_output <= 1 << 30:
        raise PolicyError("commands.max_output_bytes must be from 1 to 1073741824")
    if not 1 <= max_concurrent <= 64:
        raise PolicyError("commands.max_concurrent must be from 1 to 64")
    if not 0 <= grace <= 60:
        raise PolicyError("commands.kill_grace_seconds must be from 0 to 60")
    euid = os.geteuid() if euid is None else euid
    target = RunAs.resolve(user) if user else RunAs.current()
    switch = target.uid != euid
    if enabled:
        if target.uid == 0 and not allow_root:
            if user:
                raise PolicyError(f"--run-as {user}: commands would run as root; give "
                                  "--allow-root if that is really meant")
            raise PolicyError("the agent runs as root, so commands would run as root: give "
                              "--run-as USER (a user without root's powers) or --allow-root")
        if switch and euid != 0:
            raise PolicyError(f"--run-as {target.name}: only an agent running as root can run "
                              f"commands as another user (the agent runs as uid {euid})")
    return CommandPolicy(enabled=enabled, allowlist=allowlist, run_as=target,
                         switch_user=switch, allow_root=allow_root,
                         max_timeout_seconds=max_timeout, max_output_bytes=max_output,
                         max_concurrent=max_concurrent, kill_grace_seconds=grace)
