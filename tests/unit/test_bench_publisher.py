"""The publisher benchmark's order and medians."""

from __future__ import annotations

from tests.bench.lib.publisher import mirrored, summarise, table


def test_settings_run_in_a_mirrored_order_so_each_runs_as_often_early_as_late() -> None:
    assert mirrored([5, 20], 4) == [5, 20, 20, 5, 5, 20, 20, 5]
    assert mirrored([5, 20, 50], 1) == [5, 20, 50]


def run(linger: int, broker: float, publisher: float) -> dict[str, float]:
    return {
        "linger_ms": linger,
        "frames_per_s": 245.0,
        "broker_cores": broker,
        "broker_ms_per_frame": broker * 1000 / 245,
        "publisher_cores": publisher,
        "publisher_ms_per_frame": publisher * 1000 / 245,
    }


def test_each_setting_is_the_median_of_its_runs() -> None:
    rows = summarise(
        [run(5, 0.5, 0.3), run(20, 0.2, 0.2), run(20, 0.3, 0.1), run(5, 0.1, 0.2), run(5, 0.4, 0.9)]
    )
    assert [(r["linger_ms"], r["runs"]) for r in rows] == [(5, 3), (20, 2)]
    assert rows[0]["broker_cores"] == 0.4 and rows[0]["publisher_cores"] == 0.3
    assert rows[1]["broker_cores"] == 0.25
    assert (
        rows[1]["both_ms_per_frame"]
        == rows[1]["broker_ms_per_frame"] + rows[1]["publisher_ms_per_frame"]
    )
    assert "| 20 | 2 | 245 | 0.250 |" in table(rows)
