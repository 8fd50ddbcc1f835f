"""``streamloop status``: lag, health and the service table, from the admin API's raw answers."""

from __future__ import annotations

import importlib

import pytest
from rich.console import Console

from streamloop.status import (
    SERVICES,
    HttpProbe,
    PartitionLag,
    ServiceSpec,
    TopicLag,
    health_of,
    http_table,
    lag_rows,
    member_topics,
    probe_http,
    service_status,
    status_table,
    topic_lags,
)


def render(renderable: object) -> str:
    console = Console(width=200, record=True)
    console.print(renderable)
    return console.export_text()


def test_lag_is_end_minus_committed_and_a_missing_commit_is_not_zero() -> None:
    rows = lag_rows(
        ["t"],
        {"t": 3},
        begins={("t", 0): 0, ("t", 1): 50, ("t", 2): 0},
        ends={("t", 0): 100, ("t", 1): 80, ("t", 2): 7},
        committed={("t", 0): 90, ("t", 1): 10, ("t", 2): -1},
    )
    assert [(r.partition, r.committed, r.lag, r.pending) for r in rows] == [
        (0, 90, 10, 10),
        # A commit older than the log start counts from the log start.
        (1, 10, 30, 30),
        # -1 is Kafka's "no offset": the whole log waits.
        (2, None, None, 7),
    ]


def test_topics_without_partitions_are_missing() -> None:
    rows = lag_rows(["t", "gone"], {"t": 1}, {}, {("t", 0): 5}, {("t", 0): 5})
    [t, gone] = topic_lags(["t", "gone"], rows)
    assert (t.lag, t.uncommitted, t.missing) == (0, 0, False)
    assert gone.missing and gone.lag_text() == "missing"


def test_topic_lag_text_says_no_commits_distinctly() -> None:
    rows = [
        PartitionLag("a", 0, 0, 10, 4),
        PartitionLag("a", 1, 0, 12, None),
        PartitionLag("b", 0, 0, 400, None),
        PartitionLag("c", 0, 0, 0, None),
        PartitionLag("c", 1, 0, 9, 9),
    ]
    a, b, c = topic_lags(["a", "b", "c"], rows)
    assert (a.lag, a.uncommitted, a.uncommitted_records, a.pending) == (6, 1, 12, 18)
    assert a.lag_text() == "6 + 12 no commits"
    assert b.lag_text() == "no commits: 400"
    # An empty partition never committed on holds nothing: not worth a mention.
    assert c.lag_text() == "0"


@pytest.mark.parametrize(
    ("state", "members", "lag", "health"),
    [
        ("Stable", 1, 0, "up"),
        ("Stable", 2, 1000, "up"),
        ("Stable", 2, 1001, "lagging"),
        ("PreparingRebalance", 1, 5, "up"),
        ("CompletingRebalance", 1, 5000, "lagging"),
        ("Empty", 0, 0, "down"),
        ("Empty", 0, 10**6, "down"),
        ("Dead", 0, 0, "down"),
        ("unknown", 0, 0, "down"),
    ],
)
def test_health(state: str, members: int, lag: int, health: str) -> None:
    assert health_of(state, members, lag, threshold=1000) == health


MEMBER = {
    "member_id": "m-1",
    "client_id": "c",
    "member_metadata": {"topics": ["p.alerts", "p.extra"], "user_data": ""},
    "member_assignment": {"assigned_partitions": [{"topic": "p.alerts", "partitions": [0]}]},
}


def test_service_status_reads_describe_groups_and_strips_the_prefix() -> None:
    spec = ServiceSpec("svc", "streamloop-svc", ("alerts", "metrics"))
    status = service_status(
        spec,
        topic_prefix="p.",
        description={"group_state": "Stable", "members": [MEMBER]},
        committed={("p.alerts", 0): 3, ("p.internal", 0): 1},
        partitions={"p.alerts": 1, "p.metrics": 1, "p.extra": 1, "p.internal": 1},
        begins={},
        ends={("p.alerts", 0): 10, ("p.metrics", 0): 4, ("p.extra", 0): 0, ("p.internal", 0): 1},
        threshold=11,
    )
    # ConsumerLoop services keep their group id whatever the topic prefix.
    assert status.group == "streamloop-svc"
    assert (status.state, status.members, status.health) == ("Stable", 1, "up")
    # The spec's topics first, then what members subscribe to, then what the group committed on.
    assert [t.topic for t in status.topics] == ["alerts", "metrics", "extra", "internal"]
    assert (status.lag, status.pending) == (7, 11)
    doc = status.to_dict()
    assert doc["lag"] == 7 and doc["pending"] == 11 and doc["health"] == "up"
    assert doc["topics"][1] == {
        "topic": "metrics",
        "partitions": 1,
        "lag": 0,
        "uncommitted_partitions": 1,
        "uncommitted_records": 4,
        "missing": False,
    }


def test_pending_records_without_commits_make_a_running_service_lag() -> None:
    spec = ServiceSpec("svc", "g", ("alerts",))
    status = service_status(
        spec,
        topic_prefix="",
        description={"group_state": "Stable", "members": [MEMBER]},
        committed={},
        partitions={"alerts": 1},
        begins={},
        ends={("alerts", 0): 5000},
        threshold=1000,
    )
    assert (status.lag, status.pending, status.health) == (0, 5000, "lagging")


def test_a_group_the_broker_never_saw_is_unknown_and_down() -> None:
    status = service_status(
        ServiceSpec("svc", "g", ("alerts",)),
        topic_prefix="",
        description={"group_state": "Dead", "members": []},
        committed={},
        partitions={},
        begins={},
        ends={},
    )
    assert (status.state, status.health) == ("unknown", "down")
    assert status.topics == (TopicLag("alerts", 0, 0, missing=True),)


def test_faust_groups_take_the_prefix_and_consumer_loop_groups_do_not() -> None:
    by_name = {s.service: s for s in SERVICES}
    assert by_name["labelling"].group("staging.") == "staging.streamloop-labelling"
    assert by_name["monitoring"].group("staging.") == "staging.streamloop-monitoring"
    assert by_name["ingest"].group("staging.") == "streamloop-ingest"
    assert list(by_name) == [
        "ingest",
        "labelling",
        "serving",
        "monitoring",
        "training",
        "evaluation",
        "registry",
    ]


@pytest.mark.parametrize(
    ("service", "module", "cls", "field"),
    [
        ("ingest", "services.ingest.settings", "IngestSettings", "group_id"),
        ("labelling", "services.labelling.settings", "LabellingSettings", "app_id"),
        ("serving", "services.serving.settings", "ServingSettings", "group_id"),
        ("monitoring", "services.monitoring.settings", "MonitoringSettings", "app_id"),
        ("training", "services.training.settings", "TrainingSettings", "group_id"),
        ("evaluation", "services.evaluation.settings", "EvaluationSettings", "group_id"),
        ("registry", "services.registry.settings", "RegistrySettings", "group_id"),
    ],
)
def test_group_ids_match_the_services_settings(
    service: str, module: str, cls: str, field: str
) -> None:
    try:
        settings_cls = getattr(importlib.import_module(module), cls)
    except (ModuleNotFoundError, AttributeError):
        pytest.skip(f"{module}.{cls} does not exist in this release")
    fields = settings_cls.model_fields
    if field not in fields:
        pytest.skip(f"{cls} has no {field}")
    [spec] = [s for s in SERVICES if s.service == service]
    assert fields[field].default == spec.group_id


def test_status_table_shows_each_service_its_topics_and_health() -> None:
    statuses = [
        service_status(
            ServiceSpec("ingest", "streamloop-ingest", ("frames.raw",)),
            topic_prefix="",
            description={"group_state": "Stable", "members": [MEMBER]},
            committed={("frames.raw", 0): 100},
            partitions={"frames.raw": 1},
            begins={},
            ends={("frames.raw", 0): 2100},
        ),
        service_status(
            ServiceSpec("registry", "streamloop-registry", ("models.trained", "metrics")),
            topic_prefix="",
            description={"group_state": "Empty", "members": []},
            committed={("models.trained", 0): 1},
            partitions={"models.trained": 1, "metrics": 1},
            begins={},
            ends={("models.trained", 0): 1, ("metrics", 0): 30},
        ),
    ]
    text = render(status_table(statuses, threshold=1000))
    assert "ingest" in text and "streamloop-ingest" in text
    assert "lagging" in text and "Stable" in text and "2,000" in text
    assert "down" in text and "Empty" in text and "no commits: 30" in text


def test_http_probe_reports_an_unreachable_endpoint() -> None:
    probe = probe_http("nothing", "http://127.0.0.1:9/healthz", timeout_s=0.5)
    assert probe == HttpProbe("nothing", "http://127.0.0.1:9/healthz", False, "unreachable")
    text = render(http_table([probe, HttpProbe("api", "http://x/healthz", True, "ok")]))
    assert "unreachable" in text and "ok" in text and "http://x/healthz" in text


def test_http_probe_reports_ok_and_http_errors() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()
            self.wfile.write(b'{"status": "ok"}')

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        assert probe_http("api", f"{base}/healthz").ok
        bad = probe_http("api", f"{base}/other")
        assert (bad.ok, bad.detail) == (False, "HTTP 503")
    finally:
        server.shutdown()
        server.server_close()


# A faust worker's member as ``describe_groups`` returns it (kafka-python 3.0): faust's
# subscription (version 4, with its own user data) is not decoded by the client, so its
# metadata comes back as the raw bytes turned into a string, not as a dict.
FAUST_MEMBER = {
    "member_id": "faust-0.15.3-b9a290f9",
    "group_instance_id": None,
    "client_id": "faust-0.15.3",
    "client_host": "/127.0.0.1",
    "member_metadata": "\x00\x04\x00\x00\x00\x04\x00&streamloop-labelling-pending-changelog"
    "\x00\x19streamloop-labelling-join\x00\x0cframes.valid\x00\x06labels\x00\x00\x00\\x91"
    '{"assignment":{"actives":{},"standbys":{}},"url":"http://vm:6066"}',
    "member_assignment": {
        "assigned_partitions": [{"topic": "frames.valid", "partitions": [0, 1, 2]}],
        "user_data": "x\\x9c\\x9d\\xd0A\n",
    },
}


def test_a_faust_member_whose_metadata_is_a_string_is_counted_with_its_topics() -> None:
    spec = ServiceSpec("labelling", "streamloop-labelling", ("frames.valid", "labels"))
    status = service_status(
        spec,
        topic_prefix="",
        description={"group_state": "Stable", "members": [FAUST_MEMBER, MEMBER]},
        committed={("frames.valid", 0): 4},
        partitions={"frames.valid": 1, "labels": 1, "streamloop-labelling-join": 1},
        begins={},
        ends={("frames.valid", 0): 4},
    )
    assert (status.state, status.members, status.health) == ("Stable", 2, "up")
    topics = [t.topic for t in status.topics]
    assert topics[:2] == ["frames.valid", "labels"]
    # What the faust worker subscribes to is read from the raw subscription.
    assert "streamloop-labelling-join" in topics
    assert "streamloop-labelling-pending-changelog" in topics
    assert status.to_dict()["members"] == 2


@pytest.mark.parametrize(
    "metadata",
    [None, "", "\x00", b"\x00\x04\x00\x00\x00\x09\x00\x03abc", 42, ["x"], {"topics": "bad"}],
)
def test_member_topics_reads_what_it_can_and_never_raises(metadata: object) -> None:
    assert isinstance(member_topics({"member_metadata": metadata}), list)


def test_member_topics_of_each_shape() -> None:
    assert member_topics(MEMBER) == ["p.alerts", "p.extra"]
    assert member_topics(FAUST_MEMBER) == [
        "streamloop-labelling-pending-changelog",
        "streamloop-labelling-join",
        "frames.valid",
        "labels",
    ]
    raw = b"\x00\x01\x00\x00\x00\x01\x00\x03abc\xff\xff\xff\xff"
    assert member_topics({"member_metadata": raw}) == ["abc"]
    assert member_topics("not a member") == []
