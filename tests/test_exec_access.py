"""Who may run commands where: admins everywhere, operators where their exec claim reaches
(client-id globs and tag: globs), viewer, service and agent tokens never."""

from __future__ import annotations

import pytest

from rpad.core.exec_access import exec_claim_problem, may_exec, may_exec_anywhere


@pytest.mark.parametrize(("role", "globs", "client", "tags", "ok"), [
    ("admin", (), "anything", [], True),
    ("operator", (), "rpa-1", [], False),
    ("operator", ("rpa-*",), "rpa-1", [], True),
    ("operator", ("rpa-*",), "db-1", ["rpa-"], False),
    ("operator", ("tag:lab",), "db-1", ["lab"], True),
    ("operator", ("tag:lab",), "db-1", ["prod", "laboratory"], False),
    ("operator", ("tag:site-*",), "db-1", ["site-paris"], True),
    ("operator", ("tag:lab",), "lab", [], False),  # a tag glob never matches the client id
    ("operator", ("RPA-*",), "rpa-1", [], False),  # case-sensitive like client ids
    ("viewer", ("*",), "rpa-1", [], False),
    ("service", ("*", "tag:*"), "rpa-1", ["x"], False),
    ("agent", ("*",), "rpa-1", [], False),
])
def test_may_exec(role: str, globs: tuple[str, ...], client: str, tags: list[str],
                  ok: bool) -> None:
    assert may_exec(role, globs, client, tags) is ok


def test_may_exec_anywhere() -> None:
    assert may_exec_anywhere("admin", ())
    assert may_exec_anywhere("operator", ("x",))
    assert not may_exec_anywhere("operator", ())
    assert not may_exec_anywhere("viewer", ("*",))


@pytest.mark.parametrize("claim", ["rpa-*", [1], [""], ["tag:"], ["x" * 201], ["a"] * 101])
def test_malformed_claims(claim: object) -> None:
    assert exec_claim_problem(claim) is not None


def test_good_claim() -> None:
    assert exec_claim_problem(["rpa-*", "tag:lab"]) is None
