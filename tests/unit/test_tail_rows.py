"""``streamloop tail metrics|retrain|alerts``: the rows and tables, without a broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from rich.console import Console

from shared.events import (
    AccuracyEstimate,
    Alert,
    LiveComparison,
    Prediction,
    RetrainRequest,
    WindowMetrics,
    encode,
)
from streamloop.tail import (
    ALERT_COLUMNS,
    EVENT_TAILS,
    METRICS_COLUMNS,
    RETRAIN_COLUMNS,
    EventSieve,
    alert_row,
    comparison_text,
    estimate_text,
    event_table,
    metrics_row,
    retrain_row,
)

T = datetime(2025, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)


def window(**kw: object) -> WindowMetrics:
    fields: dict[str, object] = {
        "model_name": "vehicles",
        "model_version": "v3",
        "window_id": "v3:live:12",
        "window_kind": "count",
        "window_start": T - timedelta(minutes=1),
        "window_end": T,
        "sample_count": 1200,
        "labelled_count": 150,
        "label_coverage": 0.125,
        "accuracy": 0.8734,
        "macro_f1": 0.86149,
        "mean_confidence": 0.912,
        "psi": 0.0312,
    }
    fields.update(kw)
    return WindowMetrics.model_validate(fields)


def comparison(**kw: object) -> LiveComparison:
    fields: dict[str, object] = {
        "model_name": "vehicles",
        "champion_version": "v3",
        "challenger_version": "v4",
        "labelled": 200,
        "champion_correct": 82,
        "challenger_correct": 186,
        "champion_accuracy": 0.41,
        "challenger_accuracy": 0.93,
        "since": T - timedelta(minutes=5),
        "until": T,
    }
    fields.update(kw)
    return LiveComparison.model_validate(fields)


def render(table: object) -> str:
    console = Console(width=250, record=True)
    console.print(table)
    return console.export_text()


def test_window_row() -> None:
    row = metrics_row(window())
    assert len(row) == len(METRICS_COLUMNS)
    assert dict(zip(METRICS_COLUMNS, row, strict=True)) == {
        "time": "03-04 05:06:07",
        "version": "v3",
        "stream": "live",
        "window": "v3:live:12",
        "kind": "count",
        "labelled/samples": "150/1,200",
        "coverage": "12.5%",
        "accuracy": "0.873",
        "estimated": "-",
        "est. error": "-",
        "macro-F1": "0.861",
        "confidence": "0.912",
        "PSI": "0.031",
    }


def test_shadow_time_window_without_labels_or_reference() -> None:
    row = dict(
        zip(
            METRICS_COLUMNS,
            metrics_row(
                window(
                    shadow=True,
                    window_kind="time",
                    labelled_count=0,
                    label_coverage=0.0,
                    accuracy=None,
                    macro_f1=None,
                    psi=None,
                )
            ),
            strict=True,
        )
    )
    assert (row["stream"], row["kind"], row["coverage"]) == ("shadow", "time", "0.0%")
    assert row["accuracy"] == row["macro-F1"] == row["PSI"] == "-"


def test_a_window_shows_its_estimate_interval_and_error() -> None:
    estimate = AccuracyEstimate(value=0.25, low=0.19, high=0.31, frames=600, method="class-mix")
    row = dict(
        zip(
            METRICS_COLUMNS,
            metrics_row(window(estimate=estimate, estimate_error=0.25 - 0.873)),
            strict=True,
        )
    )
    assert row["estimated"] == "0.250* (0.190-0.310)"
    assert row["est. error"] == "-0.623"
    plain = estimate.model_copy(update={"method": "confidence"})
    assert estimate_text(plain) == "0.250 (0.190-0.310)"


def test_times_are_shown_in_utc() -> None:
    plus2 = window(window_end=T.astimezone(timezone(timedelta(hours=2))))
    assert plus2.window_end.hour == 7
    assert metrics_row(plus2)[0] == "03-04 05:06:07"


def test_comparison_row() -> None:
    assert comparison_text(comparison()) == "compare v3 0.41 vs v4 0.93 on 200 frames"
    row = metrics_row(comparison())
    assert len(row) == len(METRICS_COLUMNS)
    assert row[:4] == (
        "03-04 05:06:07",
        "v3",
        "compare",
        "compare v3 0.41 vs v4 0.93 on 200 frames",
    )
    assert set(row[4:]) == {""}
    none_yet = comparison(labelled=0, champion_accuracy=None, challenger_accuracy=None)
    assert comparison_text(none_yet) == "compare v3 n/a vs v4 n/a on 0 frames"


def test_retrain_row() -> None:
    request = RetrainRequest(
        model_name="vehicles",
        idempotency_key="drop:vehicles:v3:live:12",
        reason="live accuracy of v3 below 0.75 for 2 windows",
        trigger="monitor",
        window_ids=["v3:live:12", "v3:live:13"],
        produced_at=T,
    )
    assert dict(zip(RETRAIN_COLUMNS, retrain_row(request), strict=True)) == {
        "time": "03-04 05:06:07",
        "model": "vehicles",
        "key": "drop:vehicles:v3:live:12",
        "trigger": "monitor",
        "reason": "live accuracy of v3 below 0.75 for 2 windows",
        "windows": "v3:live:12, v3:live:13",
    }
    operator = request.model_copy(update={"trigger": "operator", "window_ids": []})
    assert retrain_row(operator)[3:] == ("operator", request.reason, "-")


def test_alert_row() -> None:
    alert = Alert(
        severity="critical",
        kind="accuracy_drop",
        message="v3 at 0.41 on 200 labels",
        model_version="v3",
        camera_id="cam-7",
        produced_at=T,
    )
    assert dict(zip(ALERT_COLUMNS, alert_row(alert), strict=True)) == {
        "time": "03-04 05:06:07",
        "severity": "critical",
        "kind": "accuracy_drop",
        "version": "v3",
        "camera": "cam-7",
        "message": "v3 at 0.41 on 200 labels",
    }
    bare = Alert(severity="info", kind="k", message="m", produced_at=T)
    assert alert_row(bare)[3:5] == ("-", "-")


def test_sieve_keeps_its_types_and_counts_the_rest() -> None:
    sieve = EventSieve(EVENT_TAILS["metrics"].types)
    w, c = window(), comparison()
    assert sieve(encode(w)) == w
    assert sieve(encode(c)) == c
    assert sieve(b"garbage") is None
    assert sieve(None) is None
    other = Alert(severity="info", kind="k", message="m")
    assert sieve(encode(other)) is None
    assert sieve.skipped == 3


def test_sieve_skips_a_prediction_on_the_alerts_tail() -> None:
    sieve = EventSieve(EVENT_TAILS["alerts"].types)
    prediction = Prediction(
        frame_id="f",
        camera_id="c",
        captured_at=T,
        model_name="vehicles",
        model_version="v3",
        predicted_class="bus",
        probabilities={"bus": 1.0},
        confidence=1.0,
        served_at=T,
        latency_from_capture_ms=1.0,
        latency_from_ingest_ms=1.0,
    )
    assert sieve(encode(prediction)) is None and sieve.skipped == 1


def test_tables_render_every_kind() -> None:
    text = render(event_table(EVENT_TAILS["metrics"], [window(), comparison()], skipped=2))
    assert "monitoring windows and live comparisons" in text
    assert "v3:live:12" in text and "compare v3 0.41 vs v4 0.93 on 200 frames" in text
    assert "2 records of other types or undecodable skipped" in text
    alerts = [
        Alert(severity=s, kind="k", message=f"{s} message", produced_at=T)
        for s in ("info", "warning", "critical")
    ]
    text = render(event_table(EVENT_TAILS["alerts"], alerts))
    for s in ("info", "warning", "critical"):
        assert f"{s} message" in text
    request = RetrainRequest(
        model_name="vehicles", idempotency_key="k1", reason="r", trigger="operator"
    )
    assert "k1" in render(event_table(EVENT_TAILS["retrain"], [request]))


def test_severity_is_coloured() -> None:
    console = Console(width=250, record=True, color_system="truecolor", force_terminal=True)
    alert = Alert(severity="critical", kind="k", message="m", produced_at=T)
    console.print(event_table(EVENT_TAILS["alerts"], [alert]))
    styled = console.export_text(styles=True)
    assert "\x1b[" in styled and "critical" in styled
