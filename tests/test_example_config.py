"""rpad.toml.example documents every key, and its values are the built-in defaults."""

import re
import tomllib
from pathlib import Path

import attrs

from rpad import config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "rpad.toml.example"


def test_example_is_the_defaults() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    assert config.from_dict(data) == config.from_dict({})


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    sections: dict[str, set[str]] = {}
    current = ""
    for line in text.splitlines():
        m = re.match(r"#?\s*\[\[?([a-z_.]+)\]\]?\s*$", line)
        if m:
            current = m.group(1)
            continue
        m = re.match(r"#?\s*([a-z_]+)\s*=", line)
        if m:
            sections.setdefault(current, set()).add(m.group(1))
    missing = []
    for section_name, cls in [
        ("", config.Config), ("http", config.HttpConfig), ("websocket", config.WebSocketConfig),
        ("presence", config.PresenceConfig), ("push", config.PushConfig),
        ("auth", config.AuthConfig), ("storage", config.StorageConfig),
        ("alerts.webhooks", config.WebhookConfig), ("alerts.email", config.EmailConfig),
        ("metrics", config.MetricsConfig), ("logging", config.LoggingConfig),
        ("cluster", config.ClusterConfig),
        ("console", config.ConsoleConfig),
    ]:
        for f in attrs.fields(cls):
            if section_name == "" and f.name != "state_dir":
                continue  # the other top-level fields are the sections themselves
            if f.name not in sections.get(section_name, set()):
                missing.append(f"{section_name}.{f.name}".lstrip("."))
    assert not missing, f"rpad.toml.example does not document: {missing}"
