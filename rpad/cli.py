"""The ``rpad`` command: serve, token, check-config, build-agent, agent, watch."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
from collections.abc import Sequence

from . import __version__, logs
from . import config as config_mod
from .config import Config, ConfigError
from .core.principal import ROLES

log = logging.getLogger("rpad")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
PRINTED_ADMIN_TOKEN_TTL = "30d"
# The cyclic garbage collector's thresholds for the daemon (Python's defaults: 700, 10, 10).
# A daemon's heap is large and long-lived (the registry, every connection's tasks and state);
# with the defaults, collections took half the CPU of fanning out to 1,000 WebSockets
# (bench/fanout.py). Young collections every 10,000 allocations, full ones 10x rarer.
GC_THRESHOLDS = (10_000, 20, 100)


def _load_config(path: str | None) -> Config:
    try:
        return config_mod.load(path)
    except ConfigError as exc:
        where = path or "built-in defaults"
        print(f"rpad: invalid configuration ({where}):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(EXIT_FAILURE) from None


def cmd_serve(args: argparse.Namespace) -> int:
    import trio

    from .auth import load_keys
    from .daemon import Daemon

    cfg = _load_config(args.config)
    try:
        load_keys(cfg)  # a bad key file is a configuration error: say so before starting
    except ValueError as exc:
        print(f"rpad: invalid configuration ({args.config or 'built-in defaults'}):",
              file=sys.stderr)
        print(f"  {exc}", file=sys.stderr)
        return EXIT_FAILURE
    logs.setup(cfg.logging.level, cfg.logging.format)
    daemon = Daemon(cfg, config_path=args.config, handle_signals=True)
    gc.set_threshold(*GC_THRESHOLDS)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listening = await nursery.start(daemon.run)
            # What start-up built (the registry loaded from the database, the modules) lives
            # as long as the process: out of the collector's scans from now on.
            gc.freeze()
            # Where it listens, said once (the daemon does not log it again, and Hypercorn's
            # own "Running on" line is filtered out by logs.setup).
            http = listening.http_url
            print(f"rpad {__version__} listening: HTTP API {http}", flush=True)
            if listening.ws_url:
                print(f"  WebSocket hub {listening.ws_url}", flush=True)
            if args.config is None and sys.stdout.isatty():
                # Built-in defaults at an interactive terminal: hand the operator a way in.
                # Never into a log: under systemd tokens come from `rpad token`.
                assert daemon.auth is not None
                token = daemon.auth.mint(role="admin", sub="admin", ttl_seconds=30 * 86400)
                print(f"  admin token (30 days): {token}", flush=True)
                print(f"  dashboard, signed in: {http}/?token={token}", flush=True)
            else:
                print(f"  dashboard at / (get a token with: {_invocation()} token --role admin "
                      "--sub you)", flush=True)

    try:
        # Until the daemon's signal receiver is open, a SIGHUP (an early `systemctl reload`)
        # must not kill the process, which is SIGHUP's default action.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        trio.run(main)
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:
        problem = _startup_problem(exc)
        if problem is not None:
            log.critical("rpad cannot start: %s", problem)
        else:
            log.critical("rpad failed", exc_info=True)
        return EXIT_FAILURE
    return EXIT_OK


def _invocation() -> str:
    """How this command was run, for the commands it suggests: ``.venv/bin/rpad`` when run as
    that (a bare ``rpad`` is not on the PATH unless the venv is activated)."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "rpad"
    if argv0.endswith("__main__.py"):
        return "python3 -m rpad"
    return argv0


def _startup_problem(exc: BaseException) -> str | None:
    """The reason rpad could not start, for the failures that are not bugs (a database it
    cannot use, an address it cannot bind); None for anything else, which is logged with its
    traceback."""
    import errno

    from .backend.local.store import StorageCorrupt
    from .backend.redis.link import DurabilityRefused

    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, StorageCorrupt | DurabilityRefused):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL,
                                                  errno.EACCES):
        return f"cannot listen: {exc.strerror} ({exc})"
    return None


def cmd_token(args: argparse.Namespace) -> int:
    import time

    import attrs

    from .auth import Authenticator, load_keys, parse_ttl

    cfg = _load_config(args.config)
    if args.secret_file:
        cfg = attrs.evolve(cfg, auth=attrs.evolve(cfg.auth, secret_file=args.secret_file))
    try:
        ttl = parse_ttl(args.ttl.strip())
        # Only on the built-in defaults may a first `rpad token` create the secret that
        # `rpad serve` will then use. With a config, a missing secret means the wrong place
        # (e.g. a systemd credential): refuse rather than sign with a new, unknown secret.
        keys = load_keys(cfg, generate=args.config is None and not args.secret_file)
    except (ValueError, OSError) as exc:
        print(f"rpad token: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    gen = args.gen
    if args.role == "agent" and gen is None:
        gen = _stored_generation(cfg, args.sub)
    auth = Authenticator(keys, issuer=cfg.auth.issuer, audience=cfg.auth.audience,
                         clock=time.time)
    try:
        token = auth.mint(role=args.role, sub=args.sub, ttl_seconds=ttl,
                          topics=args.topics or (), publish=args.publish or (), gen=gen,
                          exec_=args.exec or ())
    except ValueError as exc:
        print(f"rpad token: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(token)
    return EXIT_OK


def _stored_generation(cfg: Config, client_id: str) -> int:
    """The client's current token generation, read from the database if there is one."""
    import sqlite3

    path = cfg.database_path
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT gen FROM token_generations WHERE client_id = ?",
                             (client_id,)).fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row else 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from .auth import load_keys

    cfg = _load_config(args.config)
    try:
        load_keys(cfg, generate=False)
    except ValueError as exc:
        if "does not exist" not in str(exc):
            print(f"rpad: invalid configuration: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    print(f"{args.config or 'built-in defaults'}: ok")
    return EXIT_OK


def cmd_build_agent(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .pack import PackError, build

    try:
        out = build(Path(args.output))
    except (PackError, OSError) as exc:
        print(f"rpad build-agent: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{out}: run it on a monitored host with: python3 {out.name} agent --url ... "
          "--client-id ... --token-file ...")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rpad", description="realtime presence daemon")
    parser.add_argument("--version", action="version", version=f"rpad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the daemon")
    p.add_argument("--config", metavar="PATH", help="TOML config file (default: built-in defaults)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("token", help="print a signed token")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--sub", required=True, metavar="ID", help="user id, or the client id for agents")
    p.add_argument("--ttl", default="30d", help="lifetime: 90s, 15m, 1h, 30d or never (default 30d)")
    p.add_argument("--topics", nargs="*", metavar="GLOB", help="extra topics it may subscribe to")
    p.add_argument("--publish", nargs="*", metavar="GLOB", help="topics it may publish to")
    p.add_argument("--exec", nargs="*", metavar="GLOB",
                   help="operator tokens: the clients it may run commands on (client-id globs, "
                        "tag:GLOB for a client's tags)")
    p.add_argument("--gen", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--secret-file", metavar="PATH",
                   help="sign with this HS256 secret instead of the configured one (for example "
                        "/etc/rpad/jwt.secret, which rpad.service loads as its credential)")
    p.add_argument("--config", metavar="PATH")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("check-config", help="validate a config file")
    p.add_argument("--config", metavar="PATH")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("build-agent",
                       help="write rpad-agent.pyz: the agent and watch as one file for monitored "
                            "hosts (needs only Python 3.11, none of the server's packages)")
    p.add_argument("--output", "-o", default="rpad-agent.pyz", metavar="PATH")
    p.set_defaults(func=cmd_build_agent)

    from .client import agent, watch

    agent.add_parser(sub)
    watch.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
