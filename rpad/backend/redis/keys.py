"""Redis key names of one rpad cluster, with hash tags so that Redis Cluster works.

Everything a script touches at once shares one hash tag (one slot):

- presence is split into :data:`PRESENCE_SHARDS` shards by client id; shard ``s`` holds, under
  the tag ``{<prefix>:p<s>}``: one hash per client (``...:c:<id>``), its status history list
  (``...:h:<id>``), the set of its client ids (``...:ids``), the deadlines of clients with a
  timeout of their own (``...:due``, score: when they time out), the last heartbeats of clients
  on the default timeout (``...:dflt``, score: the heartbeat's time, so that a new default
  applies at once), the sweep's fencing token (``...:fence``) and the shard's transitions
  (``...:tx``, a stream: went online, went offline, removed, in the order they happened,
  for the alerting node);
- each topic, under ``{<prefix>:t:<topic>}``: its meta hash (``seq``) and its history stream;
- each user, under ``{<prefix>:u:<user>}``: the connections hash (cluster-wide limit);
- each address, under ``{<prefix>:f:<address>}``: its failed authentications;
- the alerts, under ``{<prefix>:a}`` (:class:`AlertKeys`): their lease and its token
  counter, the outbox, the delivery log and its counters, silences, policy overrides, the
  policy's memory and how far it has read the transitions;
- the rest under ``{<prefix>}``: the epoch, the sweep lease and its token counter, token
  generations, the nodes' reports.

Resource handling, error handling: none (names only).
"""

from __future__ import annotations

import zlib

# Presence shards: at most this many Redis Cluster shards share the presence load.
PRESENCE_SHARDS = 16


def shard_of(client_id: str) -> int:
    return zlib.crc32(client_id.encode()) % PRESENCE_SHARDS


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        g = f"{prefix}:{{{prefix}}}"
        self.epoch = f"{g}:epoch"
        self.lease = f"{g}:sweep:lease"
        self.lease_tokens = f"{g}:sweep:tokens"
        self.generations = f"{g}:gens"
        self.nodes = f"{g}:nodes"
        self.alerts = AlertKeys(prefix)
        # The one Pub/Sub channel every node listens to (presence changes, topic messages,
        # messages to users, blocks).
        self.bus = f"{prefix}:bus"

    def shard(self, s: int) -> str:
        """The common start of every presence key of shard ``s``."""
        return f"{self.prefix}:{{{self.prefix}:p{s}}}"

    def shard_keys(self, s: int) -> list[str]:
        """The keys the presence scripts declare: due, dflt, ids, fence, tx."""
        base = self.shard(s)
        return [f"{base}:due", f"{base}:dflt", f"{base}:ids", f"{base}:fence", f"{base}:tx"]

    def transitions(self, s: int) -> str:
        """Shard ``s``'s stream of transitions."""
        return f"{self.shard(s)}:tx"

    def client(self, client_id: str) -> str:
        return f"{self.shard(shard_of(client_id))}:c:{client_id}"

    def history(self, client_id: str) -> str:
        return f"{self.shard(shard_of(client_id))}:h:{client_id}"

    def topic(self, topic: str) -> tuple[str, str]:
        """(meta hash, history stream) of a topic."""
        base = f"{self.prefix}:{{{self.prefix}:t:{topic}}}"
        return f"{base}:meta", f"{base}:log"

    def user_connections(self, user_id: str) -> str:
        return f"{self.prefix}:{{{self.prefix}:u:{user_id}}}:conns"

    def failures(self, address: str) -> str:
        return f"{self.prefix}:{{{self.prefix}:f:{address}}}:fails"


class AlertKeys:
    """The alerts' keys, all under one hash tag (the alerting node's commits are one script).

    - ``lease``, ``lease:tokens``: the alert lease (``<node>|<token>``) and its token counter;
    - ``outbox``: delivery id -> the row (JSON); ``outbox:order``: delivery id -> its place
      (deliveries go out in the order they were made);
    - ``log:<target>``: a target's finished deliveries, newest first (``<n>\t<JSON>``, ``n``
      from ``log:seq``); ``log:targets``: the targets that have a log;
    - ``stats``: ``<target>\t<counter>`` -> n (delivered, failed, expired, dropped, orphaned,
      attempts);
    - ``silences``: id -> the silence (JSON); ``overrides``: ``<scope>\t<name>`` -> fields;
    - ``policy``: client id -> the policy's memory of it (JSON), and ``\tgroup``: grouping;
    - ``cursor``: presence shard -> the id of the last transition the policy has seen.
    """

    def __init__(self, prefix: str) -> None:
        self.base = f"{prefix}:{{{prefix}:a}}:"
        b = self.base
        self.lease, self.lease_tokens = b + "lease", b + "lease:tokens"
        self.outbox, self.order = b + "outbox", b + "outbox:order"
        self.log_seq, self.log_targets, self.stats = b + "log:seq", b + "log:targets", b + "stats"
        self.silences, self.overrides = b + "silences", b + "overrides"
        self.policy, self.cursor = b + "policy", b + "cursor"

    def log(self, target: str) -> str:
        return f"{self.base}log:{target}"
