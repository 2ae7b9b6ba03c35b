"""Configuration: TOML through cattrs; every bad key named by its dotted path with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from rpad import config as config_mod
from rpad.config import Config, ConfigError, parse_listen


def load_text(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "rpad.toml"
    path.write_text(text)
    return config_mod.load(path)


def problems_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return info.value.problems


def test_no_file_gives_the_built_in_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    cfg = config_mod.load(None)
    assert cfg == Config()
    assert cfg.http.listen == "127.0.0.1:8000"
    assert cfg.http.max_body_bytes == 65536
    assert cfg.websocket.listen == "127.0.0.1:8001"
    assert cfg.state_dir == "./rpad-data"
    assert cfg.database_path == Path("./rpad-data/rpad.db")
    assert cfg.secret_path == Path("./rpad-data/jwt.secret")
    assert cfg.presence.heartbeat_timeout_seconds == 60.0
    assert cfg.presence.check_interval_seconds == 30.0
    assert cfg.presence.min_interval_seconds == 1.0
    assert cfg.presence.grace_seconds == 60.0  # the heartbeat timeout unless set
    assert cfg.presence.registration == "auto"
    assert cfg.storage.commit_interval_ms == 10.0
    assert cfg.auth.leeway_seconds == 30.0
    assert cfg.push.interval_seconds == 2.0
    assert cfg.logging.level == "info" and cfg.logging.format == "text"


def test_an_empty_file_is_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert load_text(tmp_path, "") == Config()


def test_systemd_state_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/rpad:/var/lib/other")
    assert config_mod.load(None).state_dir == "/var/lib/rpad"
    assert config_mod.load(None).database_path == Path("/var/lib/rpad/rpad.db")
    # An explicit state_dir wins.
    assert load_text(tmp_path, 'state_dir = "/srv/rpad"\n').state_dir == "/srv/rpad"


def test_a_full_file_is_structured(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s" * 32)
    cfg = load_text(tmp_path, f"""
state_dir = "{tmp_path}/state"
[http]
listen = "[::1]:9000"
max_body_bytes = 1024
[presence]
registration = "manual"
heartbeat_timeout_seconds = 20
check_interval_seconds = 5
startup_grace_seconds = 0
[auth]
secret_file = "{secret}"
issuer = "https://login.example"
audience = "rpad"
[storage]
path = "{tmp_path}/db.sqlite"
commit_interval_ms = 0
[[alerts.webhooks]]
url = "https://hooks.example/x"
events = ["client.offline"]
[logging]
level = "debug"
format = "json"
""")
    assert parse_listen(cfg.http.listen) == ("::1", 9000)
    assert cfg.presence.registration == "manual"
    assert cfg.presence.heartbeat_timeout_seconds == 20.0
    assert cfg.presence.grace_seconds == 0.0
    assert cfg.secret_path == secret
    assert cfg.database_path == tmp_path / "db.sqlite"
    assert cfg.storage.commit_interval_ms == 0.0
    assert cfg.alerts.webhooks[0].url == "https://hooks.example/x"
    assert cfg.alerts.webhooks[0].events == ["client.offline"]
    assert cfg.logging.format == "json"


REFUSED = [
    # the alert policy, maintenance windows and Apprise targets (issue 14)
    ("[alerts.policy]\nalert_after_seconds = -1\ngroup_threshold = -2",
     ["alerts.policy.alert_after_seconds: must be from 0 to 31622400 seconds, got -1.0",
      "alerts.policy.group_threshold: must not be negative (0: no grouping)"]),
    ("[alerts.policy.tags.lab]\noffline_level = 'panic'",
     ["alerts.policy.tags.lab.offline_level: 'panic' is not one of info, success, warning, "
      "error, urgent"]),
    ("[[alerts.maintenance]]\nname = 'w'\ndays = ['sonday']\nstart = '25:00'\n"
     "duration_minutes = 0\ntimezone = 'Mars/Base'\ntags = ['db*']",
     ["alerts.maintenance[0].days: 'sonday' is not a day of the week (mon, tue, ..., sun)",
      "alerts.maintenance[0].start: '25:00' is not a time of day HH:MM",
      "alerts.maintenance[0].duration_minutes: must be more than 0 and at most a week",
      "alerts.maintenance[0].timezone: 'Mars/Base' is not a known time zone (such as "
      "Europe/Berlin)",
      "alerts.maintenance[0].tags[0]: not a tag (tags match exactly, no wildcards)"]),
    ("[[alerts.apprise]]\nname = 'chat'\nurl = 'nosuchscheme://x/y'\n"
     "title_template = '$nmae is down'",
     ["alerts.apprise[0].url: Apprise does not understand URL number 1 (see "
      "https://github.com/caronc/apprise/wiki for the formats)",
      "alerts.apprise[0].title_template: unknown field $nmae (fields: event, kind, level, at, "
      "clientId, name, reason, why, since, duration, ipAddress, version, tags, lastHeartbeat, "
      "count, clients, reminder, maxReminders, transitions, deliveryId)"]),
    ("[[alerts.webhooks]]\nurl = 'http://a'\nname = 'ops'\n[[alerts.webhooks]]\n"
     "url = 'http://b'\nname = 'ops'",
     ["alerts.webhooks[1].name: 'ops' is also the name of alerts.webhooks[0]"]),
    # typos: unknown keys, at every depth
    ("bogus = 1", ["bogus: unknown key"]),
    ("[presence]\nhearbeat_timeout_seconds = 10",
     ["presence.hearbeat_timeout_seconds: unknown key"]),
    ("[htp]\nlisten = '127.0.0.1:1'", ["htp: unknown key"]),
    ("[[alerts.webhooks]]\nurl = 'http://x'\nevnts = []",
     ["alerts.webhooks[0].evnts: unknown key"]),
    # wrong types
    ("[http]\nmax_body_bytes = '10'",
     ["http.max_body_bytes: expected an integer, got str '10'"]),
    ("[http]\nmax_body_bytes = 1.5",
     ["http.max_body_bytes: expected an integer, got float 1.5"]),
    ("[http]\nlisten = 8000", ["http.listen: expected a string, got int 8000"]),
    ("[presence]\nheartbeat_timeout_seconds = true",
     ["presence.heartbeat_timeout_seconds: expected a number, got bool True"]),
    ("[presence]\nheartbeat_timeout_seconds = '60'",
     ["presence.heartbeat_timeout_seconds: expected a number, got str '60'"]),
    ("[metrics]\npublic = 1", ["metrics.public: expected true or false, got int 1"]),
    ("http = 5", ["http: expected a table, got int 5"]),
    ("[websocket]\nallowed_origins = 'https://a.example'",
     ["websocket.allowed_origins: expected an array, got str 'https://a.example'"]),
    ("[websocket]\nallowed_origins = ['a', 1]",
     ["websocket.allowed_origins[1]: expected a string, got int 1"]),
    ("[alerts]\nwebhooks = {url = 'http://x'}",
     ["alerts.webhooks: expected an array, got dict {'url': 'http://x'}"]),
    ("[[alerts.webhooks]]\nevents = []", ["alerts.webhooks[0].url: required key missing"]),
    ("[presence]\nregistration = 'sometimes'",
     ["presence.registration: 'sometimes' is not one of auto, manual"]),
    ("[logging]\nlevel = 'loud'",
     ["logging.level: 'loud' is not one of debug, info, warning, error"]),
    # impossible values
    ("[presence]\nheartbeat_timeout_seconds = -1",
     ["presence.heartbeat_timeout_seconds: must be greater than 0, got -1.0"]),
    ("[presence]\nheartbeat_timeout_seconds = 10\ncheck_interval_seconds = 11",
     [("presence.check_interval_seconds: must not be longer than "
       "presence.heartbeat_timeout_seconds (11.0 > 10.0)")]),
    ("[presence]\ncheck_interval_seconds = 0",
     ["presence.check_interval_seconds: must be greater than 0, got 0.0"]),
    ("[presence]\nmin_interval_seconds = -0.5",
     ["presence.min_interval_seconds: must not be negative, got -0.5"]),
    ("[presence]\nstartup_grace_seconds = -1",
     ["presence.startup_grace_seconds: must not be negative"]),
    ("[http]\nmax_body_bytes = 0", ["http.max_body_bytes: must be greater than 0, got 0"]),
    ("[http]\nlisten = 'localhost'", ["http.listen: expected HOST:PORT, got 'localhost'"]),
    ("[http]\nlisten = '127.0.0.1:70000'",
     ["http.listen: port '70000' is not a number from 0 to 65535"]),
    ("[websocket]\nlisten = 'bad host!:1'",
     ["websocket.listen: 'bad host!' is not an IP address or host name"]),
    ("[storage]\ncommit_interval_ms = -5", ["storage.commit_interval_ms: must not be negative"]),
    ("[auth]\nleeway_seconds = -1", ["auth.leeway_seconds: must not be negative"]),
    ("[[alerts.webhooks]]\nurl = 'ftp://x'\nevents = ['client.gone']",
     ["alerts.webhooks[0].url: must start with http:// or https://, got 'ftp://x'",
      "alerts.webhooks[0].events: unknown event 'client.gone' (client.offline, client.online, client.reminder, client.flapping)"]),
    ("[alerts.email]\nenabled = true",
     ["alerts.email.recipients: must name at least one address when email is enabled"]),
]


@pytest.mark.parametrize(("text", "expected"), REFUSED,
                         ids=[e[0].split(":")[0] for _, e in REFUSED])
def test_refused_with_dotted_path_and_reason(tmp_path: Path, text: str,
                                             expected: list[str]) -> None:
    assert problems_of(tmp_path, text) == expected


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "[presence]\nheartbeat_timeout_seconds = -1\n"
                                     "typo = 1\n[http]\nlisten = 5\n")
    assert sorted(problems) == ["http.listen: expected a string, got int 5",
                                "presence.typo: unknown key"]
    # Values that are each well-typed but impossible are all reported together too.
    problems = problems_of(tmp_path, "[presence]\nheartbeat_timeout_seconds = -1\n"
                                     "min_interval_seconds = -1\n")
    assert problems == [
        "presence.heartbeat_timeout_seconds: must be greater than 0, got -1.0",
        "presence.min_interval_seconds: must not be negative, got -1.0",
    ]


def test_unreadable_or_empty_secret_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.secret"
    assert problems_of(tmp_path, f"[auth]\nsecret_file = '{missing}'") == [
        f"auth.secret_file: cannot read {missing}: No such file or directory"]
    a_dir = tmp_path / "a-directory"
    a_dir.mkdir()
    assert problems_of(tmp_path, f"[auth]\npublic_key_file = '{a_dir}'") == [
        f"auth.public_key_file: cannot read {a_dir}: Is a directory"]
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert problems_of(tmp_path, f"[auth]\nextra_secret_files = ['{empty}']") == [
        f"auth.extra_secret_files[0]: {empty} is empty"]
    assert problems_of(tmp_path, f"[[alerts.webhooks]]\nurl = 'http://x'\n"
                                 f"secret_file = '{missing}'") == [
        f"alerts.webhooks[0].secret_file: cannot read {missing}: No such file or directory"]


def test_not_toml_or_missing_file(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "[http\n")
    assert len(problems) == 1
    assert problems[0].startswith(f"{tmp_path / 'rpad.toml'}: not valid TOML")
    with pytest.raises(ConfigError) as info:
        config_mod.load(tmp_path / "nope.toml")
    assert info.value.problems == [
        f"{tmp_path / 'nope.toml'}: cannot read: No such file or directory"]


def test_config_error_str_joins_the_problems() -> None:
    err = ConfigError(["a: x", "b: y"])
    assert str(err) == "a: x; b: y"


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:8000", ("127.0.0.1", 8000)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("[::]:8001", ("::", 8001)),
    ("localhost:80", ("localhost", 80)),
])
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", [":80", "host", "1.2.3.4:-1", "1.2.3.4:x", "a b:1"])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)
