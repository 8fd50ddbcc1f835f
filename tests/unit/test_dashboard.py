"""The monitoring dashboard: the state folded from events, its snapshot, the feed's record
fold, and the HTTP server on a real local socket over an in-memory registry."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.monitoring.board import DashboardState
from services.monitoring.dashboard import DashboardServer, serve_dashboard
from services.monitoring.feed import fold_record
from shared.events import (
    AccuracyEstimate,
    Alert,
    DatasetSnapshot,
    LiveComparison,
    ModelEvaluated,
    ModelLifecycle,
    ModelTrained,
    RetrainRequest,
    WindowMetrics,
    encode,
)
from shared.registry import EvaluationView, MemoryRegistry, RegistryView, VersionView

MODEL = "vehicle-classifier"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def window(
    version: str,
    i: int,
    accuracy: float | None = 0.9,
    *,
    shadow: bool = False,
    model: str = MODEL,
    coverage: float = 0.5,
) -> WindowMetrics:
    return WindowMetrics(
        model_name=model,
        model_version=version,
        window_id=f"{version}/{'shadow' if shadow else 'live'}/{i}",
        window_kind="count",
        window_start=T0 + timedelta(minutes=i),
        window_end=T0 + timedelta(minutes=i + 1),
        shadow=shadow,
        sample_count=400,
        labelled_count=200,
        label_coverage=coverage,
        accuracy=accuracy,
        macro_f1=0.8,
        mean_confidence=0.7,
        psi=0.01,
    )


def dataset() -> DatasetSnapshot:
    return DatasetSnapshot(
        snapshot_id="s",
        frame_ids_sha256="cd" * 32,
        size=900,
        per_class={"car": 900},
        per_condition={"day": 900},
        topic_offsets={"examples:0": 900},
        holdout_size=90,
    )


def trained(version: str) -> ModelTrained:
    return ModelTrained(
        model_name=MODEL,
        model_version=version,
        idempotency_key=f"key-{version}",
        artifact_uri=f"file:///a/{version}",
        sha256="ab" * 32,
        dataset=dataset(),
        hyperparameters={},
        metrics={},
        code_version="c0",
        seed=1,
        duration_s=12.0,
        trigger="monitor",
        produced_at=T0 + timedelta(minutes=5),
    )


def lifecycle(action: Any, **kw: Any) -> ModelLifecycle:
    return ModelLifecycle(model_name=MODEL, action=action, **kw)


def version_view(version: str, number: int, aliases: list[str]) -> VersionView:
    return VersionView(
        model_name=MODEL,
        version=version,
        number=number,
        registered_at=T0 + timedelta(hours=number),
        status="blessed",
        aliases=aliases,
        was_champion="champion" in aliases,
        rolled_back=False,
        artifact_uri=f"file:///a/{version}",
        sha256="ab" * 32,
        dataset=dataset(),
        hyperparameters={},
        training_metrics={},
        parent_version=None,
        code_version="c0",
        seed=1,
        duration_s=1.0,
        idempotency_key=f"key-{version}",
        tags={},
        evaluation=EvaluationView(
            verdict="blessed",
            reasons=[],
            champion_version=None,
            metrics={
                "holdouts": {
                    "fresh": {"candidate": {"accuracy": 0.875}},
                    "reference": {"candidate": {"accuracy": float("nan")}},
                }
            },
            evaluated_at=T0,
            event_id="e",
        ),
    )


def registry_view() -> RegistryView:
    return RegistryView(
        model_name=MODEL,
        versions=[version_view("v1", 1, []), version_view("v2", 2, ["champion"])],
        aliases={"champion": "v2", "challenger": "v3"},
        history=[],
    )


def comparison(champion: str, challenger: str, minute: int, labelled: int) -> LiveComparison:
    return LiveComparison(
        model_name=MODEL,
        champion_version=champion,
        challenger_version=challenger,
        labelled=labelled,
        champion_correct=labelled // 2,
        challenger_correct=labelled // 4,
        champion_accuracy=0.5,
        challenger_accuracy=0.25,
        since=T0,
        until=T0 + timedelta(minutes=minute),
    )


# --- the fold ---------------------------------------------------------------------------


def test_windows_become_series_per_version_and_stream() -> None:
    state = DashboardState()
    for i in (2, 0, 1):
        state.apply(window("v1", i, 0.9 - i / 10), "metrics")
    state.apply(window("v2", 0, 0.95, shadow=True), "metrics")
    state.apply(window("v2", 1, None, shadow=True), "metrics")

    snap = state.snapshot(0.8, None)

    series = {(s["version"], s["stream"]): s["points"] for s in snap["series"]}
    assert set(series) == {("v1", "live"), ("v2", "shadow")}
    live = series["v1", "live"]
    assert [p["accuracy"] for p in live] == pytest.approx([0.9, 0.8, 0.7])  # time order
    assert live[0]["t"] == "2026-03-01T12:01:00+00:00"
    assert live[0] == {
        "t": "2026-03-01T12:01:00+00:00",
        "window_id": "v1/live/0",
        "accuracy": 0.9,
        "macro_f1": 0.8,
        "coverage": 0.5,
        "labelled": 200,
        "samples": 400,
        "mean_confidence": 0.7,
        "psi": 0.01,
        "estimated": None,
        "estimated_low": None,
        "estimated_high": None,
        "estimate_method": None,
        "estimate_error": None,
    }
    assert [p["accuracy"] for p in series["v2", "shadow"]] == [0.95, None]
    assert snap["threshold"] == 0.8


def test_a_window_point_carries_its_estimate_beside_the_realised_accuracy() -> None:
    state = DashboardState()
    estimate = AccuracyEstimate(value=0.3, low=0.25, high=0.35, frames=600, method="class-mix")
    state.apply(
        window("v1", 0, 0.2).model_copy(update={"estimate": estimate, "estimate_error": 0.1}),
        "metrics",
    )
    (point,) = state.snapshot(0.8, None)["series"][0]["points"]
    assert (point["accuracy"], point["estimated"]) == (0.2, 0.3)
    assert (point["estimated_low"], point["estimated_high"]) == (0.25, 0.35)
    assert (point["estimate_method"], point["estimate_error"]) == ("class-mix", 0.1)


def test_windows_are_bounded_and_redeliveries_do_not_count() -> None:
    state = DashboardState(max_windows=500)
    for i in range(520):
        state.apply(window("v1", i), "metrics")
    applied = state.applied
    state.apply(window("v1", 519), "metrics")  # the same window again

    held = state.windows()
    assert len(held) == 500
    assert held[0].window_id == "v1/live/20"
    assert state.applied == applied
    # A corrected window replaces the one held rather than adding a point.
    state.apply(window("v1", 519, 0.1), "metrics")
    assert len(state.windows()) == 500
    assert state.windows()[-1].accuracy == 0.1


def test_other_models_are_ignored_when_the_state_names_one() -> None:
    state = DashboardState(model_name=MODEL)
    state.apply(window("o1", 0, model="other"), "metrics")
    state.apply(
        RetrainRequest(model_name="other", idempotency_key="k", reason="r", trigger="operator"),
        "retrain.requests",
    )
    state.apply(Alert(severity="info", kind="k", message="kept"), "alerts")
    snap = state.snapshot(0.8, None)
    assert snap["series"] == [] and snap["markers"] == []
    assert [a["message"] for a in snap["alerts"]] == ["kept"]


def test_lifecycle_events_become_markers() -> None:
    state = DashboardState()
    at = T0 + timedelta(minutes=10)
    request = RetrainRequest(
        model_name=MODEL,
        idempotency_key="k1",
        reason="accuracy 0.61 below 0.80",
        trigger="monitor",
        produced_at=at,
    )
    evaluated = ModelEvaluated(
        model_name=MODEL,
        model_version="v2",
        champion_version="v1",
        verdict="rejected",
        reasons=["fresh accuracy dropped"],
        metrics={},
        produced_at=at + timedelta(minutes=2),
    )
    promote = lifecycle("promote_requested", model_version="v3", actor="operator", produced_at=at)
    events: list[tuple[Any, str]] = [
        (request, "retrain.requests"),
        (
            trained("v2").model_copy(update={"produced_at": at + timedelta(minutes=1)}),
            "models.trained",
        ),
        (evaluated, "models.evaluated"),
        (lifecycle("registered", model_version="v2"), "models.lifecycle"),
        (lifecycle("evaluated", model_version="v2"), "models.lifecycle"),
        (
            lifecycle(
                "alias_set",
                alias="champion",
                model_version="v2",
                previous_version="v1",
                reason="blessed",
                produced_at=at + timedelta(minutes=3),
            ),
            "models.lifecycle",
        ),
        (
            lifecycle(
                "alias_set",
                alias="challenger",
                model_version="v1",
                details={"probation_of": "v2"},
                produced_at=at + timedelta(minutes=3),
            ),
            "models.lifecycle",
        ),
        (
            lifecycle(
                "alias_set",
                alias="challenger",
                model_version=None,
                produced_at=at + timedelta(minutes=4),
            ),
            "models.lifecycle",
        ),
        (
            lifecycle(
                "rolled_back",
                model_version="v1",
                previous_version="v2",
                produced_at=at + timedelta(minutes=5),
            ),
            "models.lifecycle",
        ),
        (
            lifecycle(
                "probation_passed",
                model_version="v2",
                previous_version="v1",
                produced_at=at + timedelta(minutes=6),
            ),
            "models.lifecycle",
        ),
        (promote, "models.lifecycle"),
        (
            lifecycle(
                "command_rejected",
                model_version="v3",
                cause_id=promote.event_id,
                reason="unknown version v3",
                produced_at=at + timedelta(minutes=7),
            ),
            "models.lifecycle",
        ),
        (
            lifecycle("command_rejected", model_version="v9", cause_id="never-seen"),
            "models.lifecycle",
        ),
    ]
    for event, topic in events:
        state.apply(event, topic)

    markers = state.snapshot(0.8, None)["markers"]
    got = [(m["kind"], m["action"], m["version"]) for m in markers]
    assert got == [
        ("retrain_requested", "requested", None),
        ("promoted", "promote_requested", "v3"),
        ("trained", "trained", "v2"),
        ("evaluated", "rejected", "v2"),
        ("promoted", "alias_set", "v2"),
        ("challenger", "alias_set", "v1"),
        ("challenger", "alias_set", None),
        ("rolled_back", "rolled_back", "v1"),
        ("promoted", "probation_passed", "v2"),
        ("promoted", "command_rejected", "v3"),
    ]
    texts = {m["action"] + ":" + str(m["version"]): m["text"] for m in markers}
    assert texts["requested:None"] == "retrain requested (monitor): accuracy 0.61 below 0.80"
    assert texts["rejected:v2"] == "v2 rejected: fresh accuracy dropped"
    assert texts["alias_set:v2"] == "v2 is champion (was v1): blessed"
    assert "probation" in texts["alias_set:v1"]
    assert texts["rolled_back:v1"] == "rolled back v2 to v1"
    assert texts["command_rejected:v3"].endswith("unknown version v3")
    assert markers[0]["t"] == "2026-03-01T12:10:00+00:00"


def test_redelivered_markers_and_alerts_are_folded_once() -> None:
    state = DashboardState()
    request = RetrainRequest(model_name=MODEL, idempotency_key="k", reason="r", trigger="operator")
    alert = Alert(severity="critical", kind="accuracy_drop", message="down")
    for _ in range(3):
        state.apply(request, "retrain.requests")
        state.apply(alert, "alerts")
    snap = state.snapshot(0.8, None)
    assert len(snap["markers"]) == 1
    assert len(snap["alerts"]) == 1
    assert state.applied == 2


def test_alerts_keep_the_last_fifty_newest_first() -> None:
    state = DashboardState()
    for i in range(60):
        state.apply(
            Alert(
                severity="warning",
                kind="drift",
                message=f"alert {i}",
                produced_at=T0 + timedelta(seconds=i),
            ),
            "alerts",
        )
    alerts = state.snapshot(0.8, None)["alerts"]
    assert len(alerts) == 50
    assert alerts[0]["message"] == "alert 59"
    assert alerts[-1]["message"] == "alert 10"


def test_dlq_records_are_counted_per_topic_with_their_reasons() -> None:
    state = DashboardState()
    state.count_dlq("frames.dlq", "schema")
    state.count_dlq("frames.dlq", "schema")
    state.count_dlq("frames.dlq", "too_large")
    state.count_dlq("events.dlq", None)
    snap = state.snapshot(0.8, None)
    assert snap["dlq"] == {"frames.dlq": 3, "events.dlq": 1}
    assert snap["dlq_reasons"]["frames.dlq"] == {"schema": 2, "too_large": 1}
    assert snap["dlq_reasons"]["events.dlq"] == {"unknown": 1}


def test_the_latest_comparison_per_pair_is_kept() -> None:
    state = DashboardState()
    state.apply(comparison("v1", "v2", 5, 100), "metrics")
    state.apply(comparison("v1", "v2", 9, 300), "metrics")
    state.apply(comparison("v1", "v2", 7, 200), "metrics")  # late, and older: ignored
    state.apply(comparison("v2", "v3", 8, 50), "metrics")

    snap = state.snapshot(0.8, None)
    assert [(c["champion"], c["challenger"], c["labelled"]) for c in snap["comparisons"]] == [
        ("v1", "v2", 300),
        ("v2", "v3", 50),
    ]
    assert snap["comparison"]["labelled"] == 300  # newest, when the aliases are unknown

    # With the registry: the pair the aliases name now.
    view = registry_view()  # champion v2, challenger v3
    assert state.snapshot(0.8, view)["comparison"]["challenger"] == "v3"


def test_a_comparison_row_carries_its_discordant_counts_when_it_has_them() -> None:
    state = DashboardState()
    state.apply(comparison("v1", "v2", 5, 100), "metrics")  # an older monitor's: none
    row = state.snapshot(0.8, None)["comparison"]
    assert (row["champion_only"], row["challenger_only"]) == (None, None)
    newer = comparison("v1", "v2", 6, 120).model_copy(
        update={"champion_only": 40, "challenger_only": 10}
    )
    state.apply(newer, "metrics")
    row = state.snapshot(0.8, None)["comparison"]
    assert (row["labelled"], row["champion_only"], row["challenger_only"]) == (120, 40, 10)


def test_snapshot_models_table_from_the_registry_view() -> None:
    snap = DashboardState().snapshot(0.75, registry_view())
    assert snap["champion"] == "v2" and snap["challenger"] == "v3"
    assert [m["version"] for m in snap["models"]] == ["v2", "v1"]  # newest first
    row = snap["models"][0]
    assert row == {
        "version": "v2",
        "number": 2,
        "aliases": ["champion"],
        "status": "blessed",
        "verdict": "blessed",
        "fresh_accuracy": 0.875,
        "reference_accuracy": None,  # NaN in the evaluation: JSON has no NaN
        "created": "2026-03-01T14:00:00+00:00",
        "was_champion": True,
        "rolled_back": False,
    }
    assert DashboardState().snapshot(0.75, None)["models"] == []


def test_snapshot_is_strict_json() -> None:
    state = DashboardState()
    state.apply(window("v1", 0, float("nan")), "metrics")
    state.apply(trained("v1"), "models.trained")
    snap = state.snapshot(float("nan"), registry_view())
    text = json.dumps(snap, allow_nan=False)  # raises on NaN or a non-JSON type
    assert json.loads(text)["series"][0]["points"][0]["accuracy"] is None


def test_long_texts_are_cut() -> None:
    state = DashboardState()
    state.apply(Alert(severity="info", kind="k", message="x" * 10_000), "alerts")
    assert len(state.snapshot(0.8, None)["alerts"][0]["message"]) == 300


def test_apply_and_snapshot_from_many_threads() -> None:
    state = DashboardState(max_windows=100)

    def writer(version: str) -> None:
        for i in range(300):
            state.apply(window(version, i), "metrics")
            state.count_dlq("events.dlq", "schema")

    def reader() -> None:
        for _ in range(100):
            json.dumps(state.snapshot(0.8, None), allow_nan=False)

    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(writer, f"v{n}") for n in range(4)]
        futures += [pool.submit(reader) for _ in range(2)]
        for f in futures:
            f.result()  # re-raises whatever a thread raised
    assert len(state.windows()) == 100
    assert state.snapshot(0.8, None)["dlq"]["events.dlq"] == 1200


# --- the feed's record fold -------------------------------------------------------------


def test_fold_record_decodes_events_counts_dead_letters_and_skips_garbage() -> None:
    state = DashboardState()
    assert fold_record(state, "metrics", encode(window("v1", 0)))
    assert not fold_record(state, "metrics", b"not json")
    assert not fold_record(state, "alerts", None)
    assert fold_record(state, "frames.dlq", b"\xff raw bytes", [("dlq.error", b"not_json")])
    assert fold_record(state, "events.dlq", b"{}", [])
    snap = state.snapshot(0.8, None)
    assert len(snap["series"]) == 1
    assert snap["dlq"] == {"frames.dlq": 1, "events.dlq": 1}
    assert snap["dlq_reasons"]["frames.dlq"] == {"not_json": 1}


# --- the HTTP server --------------------------------------------------------------------


@pytest.fixture
def registry() -> MemoryRegistry:
    reg = MemoryRegistry()
    reg.replace(registry_view())
    return reg


@pytest.fixture
def server(registry: MemoryRegistry) -> Iterator[DashboardServer]:
    state = DashboardState()
    state.apply(window("v2", 0, 0.9), "metrics")
    state.apply(Alert(severity="warning", kind="drift", message="psi 0.3"), "alerts")
    srv = serve_dashboard(state, registry, MODEL, 0.8, "127.0.0.1", 0)
    yield srv
    srv.close()


def get(
    srv: DashboardServer, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_the_page_loads_only_local_assets(server: DashboardServer) -> None:
    status, headers, body = get(server, "/")
    page = body.decode()
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in headers["content-security-policy"]
    assert 'id="accuracy-chart"' in page
    assert '<script src="static/plotly.min.js"></script>' in page
    assert "http://" not in page and "https://" not in page
    assert server.url == f"http://127.0.0.1:{server.port}"


def test_plotly_is_served_from_the_installed_package(server: DashboardServer) -> None:
    import gzip
    from importlib.resources import files

    status, headers, body = get(server, "/static/plotly.min.js")
    assert status == 200
    assert headers["content-type"].startswith("application/javascript")
    assert body == files("plotly").joinpath("package_data", "plotly.min.js").read_bytes()
    assert b"plotly.js v" in body[:200]
    status, headers, zipped = get(
        server, "/static/plotly.min.js", headers={"Accept-Encoding": "gzip, deflate"}
    )
    assert headers["content-encoding"] == "gzip"
    assert gzip.decompress(zipped) == body


def test_api_state_is_the_snapshot_with_the_models(server: DashboardServer) -> None:
    status, headers, body = get(server, "/api/state?ts=1")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    data = json.loads(body)
    assert data["model_name"] == MODEL
    assert data["threshold"] == 0.8
    assert [m["version"] for m in data["models"]] == ["v2", "v1"]
    assert data["series"][0]["points"][0]["accuracy"] == 0.9
    assert data["alerts"][0]["message"] == "psi 0.3"
    assert "error" not in data


def test_api_state_survives_a_registry_outage(
    server: DashboardServer, registry: MemoryRegistry
) -> None:
    registry.available = False
    status, _, body = get(server, "/api/state")
    data = json.loads(body)
    assert status == 200
    assert data["models"] == []
    assert data["error"].startswith("registry unavailable")
    assert data["series"]  # the charts stay live


def test_without_a_registry_the_table_is_empty() -> None:
    srv = serve_dashboard(DashboardState(), None, MODEL, 0.8, "127.0.0.1", 0)
    try:
        data = json.loads(get(srv, "/api/state")[2])
        assert data["models"] == [] and "error" not in data
    finally:
        srv.close()


def test_health_unknown_routes_and_methods(server: DashboardServer) -> None:
    assert get(server, "/healthz")[0:3:2] == (200, b'{"status":"ok"}')
    status, _, body = get(server, "/nope")
    assert status == 404 and json.loads(body) == {"error": "no such route"}
    status, headers, _ = get(server, "/api/state", method="POST")
    assert status == 405 and headers["allow"] == "GET"
    status, _, body = get(server, "/", method="BREW")
    assert status == 405 and json.loads(body)["error"] == "method not allowed"
