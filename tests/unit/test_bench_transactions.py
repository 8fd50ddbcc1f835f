"""The transactions benchmark's bookkeeping: the figures it takes from a run and how it
picks each mode's best round (the runs themselves need the whole stack)."""

from __future__ import annotations

from tests.bench.lib.transactions import best, env_of, figures


def test_each_mode_sets_both_frame_path_services() -> None:
    assert env_of("off") == {
        "STREAMLOOP_INGEST_TRANSACTIONS__ENABLED": "false",
        "STREAMLOOP_SERVING_TRANSACTIONS__ENABLED": "false",
    }
    assert set(env_of("on").values()) == {"true"}


def test_the_best_round_is_the_fastest_and_the_lowest_latency() -> None:
    def run(rate: float, p50: float, p99: float) -> dict[str, object]:
        record = {"p50_ms": p50, "p99_ms": p99}
        return {"saturation": {"frames_per_s": rate}, "paced": [{"record": record}]}

    runs = [figures(run(600.0, 200, 500)), figures(run(900.0, 180, 350)), figures({"error": "x"})]
    assert runs[2]["frames_per_s"] is None
    assert best(runs) == {"frames_per_s": 900.0, "p50_ms": 180.0, "p99_ms": 350.0}
    assert best([runs[2]])["frames_per_s"] is None
