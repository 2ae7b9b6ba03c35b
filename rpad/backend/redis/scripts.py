"""The Lua scripts of the Redis backend (``lua/*.lua``, package data), ready to run by SHA.

Each presence script is prefixed with ``lua/common.lua`` (helpers shared by the scripts that
change a client). Every script touches only keys of one hash tag (see :mod:`.keys`), so that
each runs on one Redis Cluster node.

Resource handling: read once at import. Error handling: a missing file is a broken install
(raises at import).
"""

from __future__ import annotations

import hashlib
from importlib import resources

import attrs

_WITH_COMMON = ("heartbeat", "sweep", "register", "remove")
_NAMES = ("heartbeat", "sweep", "register", "remove", "publish", "replay", "claim", "failure",
          "lease", "release", "generation", "alerts")


@attrs.frozen
class Script:
    name: str
    source: str
    sha: str


def _load(name: str) -> Script:
    folder = resources.files(__package__) / "lua"
    source = (folder / f"{name}.lua").read_text()
    if name in _WITH_COMMON:
        source = (folder / "common.lua").read_text() + "\n" + source
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


SCRIPTS: dict[str, Script] = {name: _load(name) for name in _NAMES}
