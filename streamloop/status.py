"""``streamloop status``: is every StreamLoop service consuming, and how far behind is it?

Services talk only through Kafka, so a service's consumer group says whether it runs (the
group has members) and how far behind it is (the records between the group's committed
offsets and the end of each log). This module knows every service's group and topics, turns
the raw answers of the admin API into rows with pure functions (unit-tested without a
broker), and has one thin collector that asks Kafka (``collect``) and one that probes the HTTP
health endpoints (``probe_http``).
"""

from __future__ import annotations

import struct
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rich.table import Table

from shared.settings import KafkaSettings
from shared.topics import Topics

__all__ = [
    "DEFAULT_LAG_THRESHOLD",
    "DOWN_STATES",
    "HTTP_ENDPOINTS",
    "SERVICES",
    "Health",
    "HttpProbe",
    "KafkaUnreachableError",
    "PartitionLag",
    "ServiceSpec",
    "ServiceStatus",
    "TopicLag",
    "collect",
    "health_of",
    "http_table",
    "lag_rows",
    "member_topics",
    "probe_http",
    "service_status",
    "status_table",
    "topic_lags",
]

DEFAULT_LAG_THRESHOLD = 1000
"""Records behind above which a running service counts as ``lagging``."""

Health = Literal["up", "down", "lagging"]

DOWN_STATES = frozenset({"Empty", "Dead", "unknown"})
"""Group states in which nobody consumes (``unknown``: the broker has never seen the group)."""


@dataclass(frozen=True)
class ServiceSpec:
    """One StreamLoop service as Kafka sees it: its consumer group and the topics it reads.

    ``group_id`` is the default of the service's settings class (``group_id``, or ``app_id``
    for the faust apps). The ``ConsumerLoop`` services use it as it is, whatever the topic
    prefix; a faust app's id, and so its group, is ``topic_prefix + app_id``
    (``services/labelling/app.py``), hence ``prefixed_group``."""

    service: str
    group_id: str
    topics: tuple[str, ...]
    """StreamLoop topic names, without ``KafkaSettings.topic_prefix``."""
    prefixed_group: bool = False

    def group(self, topic_prefix: str) -> str:
        """The consumer group id in a deployment whose topics carry ``topic_prefix``."""
        return topic_prefix + self.group_id if self.prefixed_group else self.group_id


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("ingest", "streamloop-ingest", (Topics.FRAMES_RAW,)),
    ServiceSpec(
        "labelling",
        "streamloop-labelling",
        (Topics.FRAMES_VALID, Topics.LABELS),
        prefixed_group=True,
    ),
    ServiceSpec("serving", "streamloop-serving", (Topics.FRAMES_VALID,)),
    ServiceSpec(
        "monitoring",
        "streamloop-monitoring",
        (Topics.PREDICTIONS, Topics.PREDICTIONS_SHADOW, Topics.LABELS),
        prefixed_group=True,
    ),
    ServiceSpec("training", "streamloop-training", (Topics.RETRAIN_REQUESTS,)),
    ServiceSpec("evaluation", "streamloop-evaluation", (Topics.MODELS_TRAINED,)),
    ServiceSpec(
        "registry",
        "streamloop-registry",
        (
            Topics.MODELS_TRAINED,
            Topics.MODELS_EVALUATED,
            Topics.MODELS_LIFECYCLE,
            Topics.METRICS,
        ),
    ),
)
"""Every service that consumes; the simulator (a data source) is left out."""

HTTP_ENDPOINTS: tuple[tuple[str, str], ...] = (
    ("registry API", "http://127.0.0.1:8710/healthz"),
    ("monitoring dashboard", "http://127.0.0.1:8720/healthz"),
)
"""Health endpoints of the services that serve HTTP (their default local ports)."""


# --- lag ---------------------------------------------------------------------------------

TP = tuple[str, int]
"""(topic, partition); kafka-python's ``TopicPartition`` is such a tuple."""


@dataclass(frozen=True)
class PartitionLag:
    """One partition of a group's topic: where its log starts and ends, and the group's
    committed offset (None: the group never committed on it)."""

    topic: str
    partition: int
    begin: int
    end: int
    committed: int | None

    @property
    def lag(self) -> int | None:
        """Records after the committed offset that are still in the log (a commit older
        than the retention counts from the log start); None without a commit."""
        if self.committed is None:
            return None
        return max(0, self.end - max(self.committed, self.begin))

    @property
    def pending(self) -> int:
        """Records the group still has to read. Without a commit that is the whole log:
        every StreamLoop consumer starts from the earliest offset."""
        lag = self.lag
        return lag if lag is not None else max(0, self.end - self.begin)


def lag_rows(
    topics: Iterable[str],
    partitions: Mapping[str, int],
    begins: Mapping[TP, int],
    ends: Mapping[TP, int],
    committed: Mapping[TP, int],
) -> list[PartitionLag]:
    """A ``PartitionLag`` per partition of each of ``topics`` that exists (``partitions``:
    topic -> partition count). Offsets missing from ``begins`` / ``ends`` count as 0; a
    committed offset below 0 (Kafka's "none") counts as no commit."""
    rows: list[PartitionLag] = []
    for topic in topics:
        for p in range(partitions.get(topic, 0)):
            c = committed.get((topic, p))
            rows.append(
                PartitionLag(
                    topic=topic,
                    partition=p,
                    begin=begins.get((topic, p), 0),
                    end=ends.get((topic, p), 0),
                    committed=c if c is not None and c >= 0 else None,
                )
            )
    return rows


@dataclass(frozen=True)
class TopicLag:
    """A group's position on one topic, summed over its partitions."""

    topic: str
    partitions: int
    lag: int
    """Records behind, over the partitions with a commit."""
    uncommitted: int = 0
    """Partitions without a commit."""
    uncommitted_records: int = 0
    """Records in those partitions (all still to read)."""
    missing: bool = False
    """The topic does not exist."""

    @property
    def pending(self) -> int:
        return self.lag + self.uncommitted_records

    def lag_text(self) -> str:
        """The lag cell: ``120``, ``no commits: 400`` (records waiting where the group never
        committed), ``120 + 12 no commits`` (some partitions never committed on), ``missing``
        (no such topic)."""
        if self.missing:
            return "missing"
        if self.uncommitted == self.partitions:
            return f"no commits: {self.uncommitted_records:,}"
        text = f"{self.lag:,}"
        if self.uncommitted_records:  # empty partitions never committed on: nothing to say
            text += f" + {self.uncommitted_records:,} no commits"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partitions": self.partitions,
            "lag": self.lag,
            "uncommitted_partitions": self.uncommitted,
            "uncommitted_records": self.uncommitted_records,
            "missing": self.missing,
        }


def topic_lags(topics: Sequence[str], rows: Iterable[PartitionLag]) -> list[TopicLag]:
    """``rows`` summed per topic, in the order of ``topics``; a topic without partitions in
    ``rows`` is reported missing."""
    by_topic: dict[str, list[PartitionLag]] = {t: [] for t in topics}
    for r in rows:
        by_topic.setdefault(r.topic, []).append(r)
    out: list[TopicLag] = []
    for topic, parts in by_topic.items():
        if not parts:
            out.append(TopicLag(topic, 0, 0, missing=True))
            continue
        bare = [p for p in parts if p.committed is None]
        out.append(
            TopicLag(
                topic=topic,
                partitions=len(parts),
                lag=sum(p.lag or 0 for p in parts),
                uncommitted=len(bare),
                uncommitted_records=sum(p.pending for p in bare),
            )
        )
    return out


# --- health ------------------------------------------------------------------------------


def health_of(state: str, members: int, lag: int, threshold: int) -> Health:
    """``up`` when the group has a member, ``lagging`` when it also has more than
    ``threshold`` records to read, ``down`` when nobody consumes (no member, or a state in
    ``DOWN_STATES``). Rebalancing states count as up: the members are there."""
    if members < 1 or state in DOWN_STATES:
        return "down"
    return "lagging" if lag > threshold else "up"


@dataclass(frozen=True)
class ServiceStatus:
    """One row of ``streamloop status``."""

    service: str
    group: str
    state: str
    members: int
    topics: tuple[TopicLag, ...]
    health: Health

    @property
    def lag(self) -> int:
        """Records behind on the partitions the group has committed on."""
        return sum(t.lag for t in self.topics)

    @property
    def pending(self) -> int:
        """Records still to read, including never-committed partitions."""
        return sum(t.pending for t in self.topics)

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "group": self.group,
            "state": self.state,
            "members": self.members,
            "lag": self.lag,
            "pending": self.pending,
            "health": self.health,
            "topics": [t.to_dict() for t in self.topics],
        }


def member_topics(member: object) -> list[str]:
    """The topics a group member subscribes to, from its entry in ``describe_groups``.

    The admin client decodes a standard consumer subscription into a dict (``topics``); one
    it cannot decode (a faust worker's) comes back as the raw bytes, or as those bytes made
    into a string, and its topics are read from the subscription's header (version, then an
    array of length-prefixed names). Whatever does not fit gives ``[]``: a member is still a
    member when its subscription cannot be read."""
    if not isinstance(member, Mapping):
        return []
    meta = member.get("member_metadata")
    if isinstance(meta, Mapping):
        topics = meta.get("topics")
        return [t for t in topics if isinstance(t, str)] if isinstance(topics, list) else []
    if isinstance(meta, str):
        # The client turned undecodable bytes into text with backslash escapes; the header
        # and topic names are ASCII, so they come back intact through latin-1.
        meta = meta.encode("latin-1", errors="replace")
    if isinstance(meta, bytes | bytearray):
        return _subscription_topics(bytes(meta))
    return []


def _subscription_topics(raw: bytes) -> list[str]:
    """Topic names of a raw consumer-protocol subscription: int16 version, int32 count,
    then per topic an int16 length and the name. [] when ``raw`` is not one."""
    try:
        _version, count = struct.unpack_from(">hi", raw, 0)
        at = 6
        if not 0 <= count <= len(raw):
            return []
        topics: list[str] = []
        for _ in range(count):
            (size,) = struct.unpack_from(">h", raw, at)
            at += 2
            name = raw[at : at + size]
            if size < 0 or len(name) != size:
                return []
            topics.append(name.decode("ascii"))
            at += size
    except (struct.error, UnicodeDecodeError):
        return []
    return topics


def _strip(name: str, prefix: str) -> str:
    return name[len(prefix) :] if prefix and name.startswith(prefix) else name


def service_status(
    spec: ServiceSpec,
    *,
    topic_prefix: str,
    description: Mapping[str, Any] | None,
    committed: Mapping[TP, int],
    partitions: Mapping[str, int],
    begins: Mapping[TP, int],
    ends: Mapping[TP, int],
    threshold: int = DEFAULT_LAG_THRESHOLD,
) -> ServiceStatus:
    """Assemble one service's row from the admin API's raw answers (pure).

    ``description`` is the group's entry of ``describe_groups`` (None: not described);
    every other mapping uses full topic names, which the row shows without ``topic_prefix``.
    The topics are the spec's, then those the members subscribe to and those the group has
    committed on (a faust app's internal topics, for example)."""
    description = description or {}
    members = list(description.get("members") or [])
    subscribed = [t for m in members for t in member_topics(m)]
    full = [topic_prefix + t for t in spec.topics]
    for t in [*sorted(subscribed), *sorted({tp[0] for tp in committed})]:
        if t not in full:
            full.append(t)
    rows = lag_rows(full, partitions, begins, ends, committed)
    lags = topic_lags(full, rows)
    logical = tuple(
        TopicLag(
            _strip(t.topic, topic_prefix),
            t.partitions,
            t.lag,
            t.uncommitted,
            t.uncommitted_records,
            t.missing,
        )
        for t in lags
    )
    state = str(description.get("group_state") or "unknown")
    if state == "Dead" and not committed:
        state = "unknown"  # the broker answers Dead for a group it has never seen
    pending = sum(t.pending for t in logical)
    return ServiceStatus(
        service=spec.service,
        group=spec.group(topic_prefix),
        state=state,
        members=len(members),
        topics=logical,
        health=health_of(state, len(members), pending, threshold),
    )


# --- rendering ---------------------------------------------------------------------------

_HEALTH_STYLE = {"up": "bold green", "lagging": "bold yellow", "down": "bold red"}


def status_table(statuses: Iterable[ServiceStatus], *, threshold: int) -> Table:
    """The services table: a section per service, a row per topic it reads. The first row
    names the service and its group, its health and group state, members and total lag."""
    table = Table(
        title="services (consumer groups)",
        caption=f"lagging: up, and more than {threshold:,} records wait. no commits, +N: records "
        "in partitions the group never committed on (all of them wait).",
    )
    table.add_column("service / group", overflow="fold")
    table.add_column("health / state", overflow="fold")
    table.add_column("members", justify="right")
    table.add_column("lag", justify="right")
    table.add_column("topic", overflow="fold")
    table.add_column("topic lag", justify="right")
    for s in statuses:
        uncommitted = s.pending - s.lag
        total = f"{s.lag:,}" + (f"\n[dim]+{uncommitted:,}[/]" if uncommitted else "")
        head = (
            f"[cyan]{s.service}[/]\n[dim]{s.group}[/]",
            f"[{_HEALTH_STYLE[s.health]}]{s.health}[/]\n[dim]{s.state}[/]",
            str(s.members),
            total,
        )
        topics = s.topics or (TopicLag("-", 0, 0),)
        for i, t in enumerate(topics):
            lag = t.lag_text()
            if t.pending > threshold:
                lag = f"[yellow]{lag}[/]"
            table.add_row(*(head if i == 0 else ("", "", "", "")), t.topic, lag)
        table.add_section()
    return table


@dataclass(frozen=True)
class HttpProbe:
    """The answer of one health endpoint."""

    name: str
    url: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "ok": self.ok, "detail": self.detail}


def http_table(probes: Iterable[HttpProbe]) -> Table:
    """The HTTP endpoints table."""
    table = Table(title="HTTP health endpoints")
    table.add_column("endpoint", style="cyan")
    table.add_column("url")
    table.add_column("status")
    for p in probes:
        style = "green" if p.ok else "red" if p.detail.startswith("HTTP") else "dim"
        table.add_row(p.name, p.url, f"[{style}]{p.detail}[/]")
    return table


# --- collectors --------------------------------------------------------------------------


class KafkaUnreachableError(RuntimeError):
    """Kafka did not answer: the one case in which ``streamloop status`` fails."""


def probe_http(name: str, url: str, timeout_s: float = 1.0) -> HttpProbe:
    """GET ``url``: ``ok`` on a 2xx answer, ``HTTP <code>`` on another one, ``unreachable``
    when nothing answers in ``timeout_s``. Proxies from the environment are ignored: the
    endpoints are local."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as resp:
            code = int(resp.status)
    except urllib.error.HTTPError as exc:
        return HttpProbe(name, url, False, f"HTTP {exc.code}")
    except (urllib.error.URLError, OSError, ValueError):
        return HttpProbe(name, url, False, "unreachable")
    return HttpProbe(name, url, 200 <= code < 300, "ok" if 200 <= code < 300 else f"HTTP {code}")


@dataclass
class _Snapshot:
    """What one pass over the admin API returned."""

    descriptions: dict[str, Any] = field(default_factory=dict)
    committed: dict[str, dict[TP, int]] = field(default_factory=dict)
    partitions: dict[str, int] = field(default_factory=dict)
    begins: dict[TP, int] = field(default_factory=dict)
    ends: dict[TP, int] = field(default_factory=dict)


def _snapshot(
    settings: KafkaSettings, groups: Sequence[str], wanted: Iterable[str], timeout_s: float
) -> _Snapshot:
    from kafka import TopicPartition
    from kafka.admin import KafkaAdminClient, OffsetSpec
    from kafka.errors import KafkaError

    timeout_ms = int(timeout_s * 1000)
    kwargs = {**settings.client_kwargs(), "request_timeout_ms": max(1000, timeout_ms)}
    try:
        admin = KafkaAdminClient(
            client_id="streamloop-status", bootstrap_timeout_ms=timeout_ms, **kwargs
        )
    except (KafkaError, OSError) as exc:
        raise KafkaUnreachableError(
            f"Kafka at {settings.bootstrap_servers} did not answer: {exc}"
        ) from exc
    snap = _Snapshot()
    try:
        snap.descriptions = dict(admin.describe_groups(list(groups)))
        offsets = admin.list_group_offsets({g: None for g in groups})
        snap.committed = {
            g: {(tp.topic, tp.partition): om.offset for tp, om in offsets.get(g, {}).items()}
            for g in groups
        }
        topics = set(wanted)
        for desc in snap.descriptions.values():
            for m in desc.get("members") or []:
                topics.update(member_topics(m))
        for commits in snap.committed.values():
            topics.update(t for t, _ in commits)
        existing = set(admin.list_topics())
        present = sorted(topics & existing)
        if present:
            snap.partitions = {
                t["name"]: len(t["partitions"]) for t in admin.describe_topics(present)
            }
        tps = [TopicPartition(t, p) for t, n in snap.partitions.items() for p in range(n)]
        if tps:
            for spec, into in ((OffsetSpec.EARLIEST, snap.begins), (OffsetSpec.LATEST, snap.ends)):
                res = admin.list_partition_offsets(dict.fromkeys(tps, spec))
                into.update({(tp.topic, tp.partition): o.offset for tp, o in res.items()})
    except (KafkaError, OSError) as exc:
        raise KafkaUnreachableError(f"Kafka at {settings.bootstrap_servers}: {exc}") from exc
    finally:
        admin.close()
    return snap


def collect(
    settings: KafkaSettings,
    services: Sequence[ServiceSpec] = SERVICES,
    *,
    threshold: int = DEFAULT_LAG_THRESHOLD,
    timeout_s: float = 5.0,
) -> list[ServiceStatus]:
    """Ask Kafka about every service's group: one ``describe_groups``, one committed-offset
    fetch for all groups, and the start and end offsets of every topic involved.

    Raises:
        KafkaUnreachableError: the cluster did not answer within ``timeout_s``.
    """
    prefix = settings.topic_prefix
    groups = [s.group(prefix) for s in services]
    wanted = {prefix + t for s in services for t in s.topics}
    snap = _snapshot(settings, groups, wanted, timeout_s)
    return [
        service_status(
            spec,
            topic_prefix=prefix,
            description=snap.descriptions.get(group),
            committed=snap.committed.get(group, {}),
            partitions=snap.partitions,
            begins=snap.begins,
            ends=snap.ends,
            threshold=threshold,
        )
        for spec, group in zip(services, groups, strict=True)
    ]
