"""`rpad token` signs with the secret rpad serve uses, and never invents one when a config is
given (on a systemd host that would print tokens nobody accepts)."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest

from rpad.cli import main


def test_token_refuses_to_invent_a_secret_for_a_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "rpad.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    assert main(["token", "--role", "admin", "--sub", "x", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "jwt.secret does not exist" in err and "--secret-file" in err
    assert not (tmp_path / "state" / "jwt.secret").exists()


def test_token_with_secret_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "rpad.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    secret = tmp_path / "jwt.secret"
    secret.write_text("s" * 40 + "\n")
    assert main(["token", "--role", "viewer", "--sub", "ops", "--config", str(cfg),
                 "--secret-file", str(secret)]) == 0
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(token, "s" * 40, algorithms=["HS256"])
    assert claims["sub"] == "ops" and claims["role"] == "viewer"
