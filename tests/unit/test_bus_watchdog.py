"""The consumer watchdog's verdict, from the client's own metrics."""

from __future__ import annotations

from shared.bus import member_lost


def test_a_member_without_a_heartbeat_for_longer_than_the_limit_is_lost() -> None:
    def metrics(ago: object) -> dict[str, dict[str, object]]:
        return {"consumer-coordinator-metrics": {"last-heartbeat-seconds-ago": ago}}

    assert member_lost(metrics(120.0), after_s=90)
    assert not member_lost(metrics(2.5), after_s=90)
    assert not member_lost({}, after_s=90), "no coordinator metrics yet: not a verdict"
    assert not member_lost(metrics(None), after_s=90)
