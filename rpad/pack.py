"""``rpad build-agent``: the agent and ``watch`` as one file, ``rpad-agent.pyz``, for monitored
hosts that need nothing but Python 3.11.

A zipapp (PEP 441) of ``rpad/client`` and the pure-Python packages it runs on (trio,
trio-websocket and theirs), taken from the environment rpad is installed in: no network, no
compiler, nothing of the server (Quart, Hypercorn, prometheus-client, cryptography, pyjwt).
``python3 rpad-agent.pyz agent --url ... --client-id ... --token-file ...`` runs the agent.

Error handling: a dependency that is not installed, or that is not pure Python, is an error
naming it (the file would not run elsewhere).
"""

from __future__ import annotations

import importlib.metadata
import tempfile
import zipapp
from pathlib import Path

# The distributions rpad/client imports, with everything they import in turn.
CLIENT_DISTRIBUTIONS = ("trio", "trio-websocket", "wsproto", "h11", "attrs", "outcome",
                        "sniffio", "sortedcontainers", "idna")
_COMPILED_SUFFIXES = (".so", ".pyd", ".dylib")


class PackError(Exception):
    pass


def _distribution_files(name: str) -> list[tuple[Path, str]]:
    """(installed file, path in the archive) of a distribution's importable files."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise PackError(f"{name} is not installed in this environment") from None
    out: list[tuple[Path, str]] = []
    for f in dist.files or ():
        rel = f.as_posix()
        if rel.startswith(("..", "/")) or "__pycache__" in rel or rel.endswith(".pyc"):
            continue  # scripts installed elsewhere, and caches
        if ".dist-info/" in rel and not rel.endswith(".dist-info/METADATA"):
            continue  # the metadata is kept: some packages read their own or others' versions
        if rel.endswith(_COMPILED_SUFFIXES):
            raise PackError(f"{name} is not pure Python ({rel}): it cannot run from a zipapp")
        out.append((Path(str(f.locate())), rel))
    if not out:
        raise PackError(f"{name} has no files to pack")
    return out


def build(output: Path) -> Path:
    """Write the zipapp to ``output``; returns it."""
    package = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "rpad").mkdir()
        (root / "rpad" / "__init__.py").write_bytes((package / "__init__.py").read_bytes())
        client = root / "rpad" / "client"
        client.mkdir()
        for src in sorted((package / "client").glob("*.py")):
            (client / src.name).write_bytes(src.read_bytes())
        for name in CLIENT_DISTRIBUTIONS:
            for src, rel in _distribution_files(name):
                dest = root / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(src.read_bytes())
        output.parent.mkdir(parents=True, exist_ok=True)
        zipapp.create_archive(root, output, interpreter="/usr/bin/env python3",
                              main="rpad.client.__main__:main", compressed=True)
    return output
