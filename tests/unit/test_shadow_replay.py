"""Shadow replay: a new challenger scored on the frames served since its data cut."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from services.serving.core import AliasTracker, ModelRef, ServingCore
from services.serving.ingress import Ingress
from services.serving.replay import REPLAY_FAILURES, ShadowReplay
from shared.artifacts import ArtifactStore
from shared.events import FrameValid, ModelLifecycle, Prediction
from shared.topics import Topics
from tests.synthetic import trained_event
from tests.unit.test_serving import MODEL, CountingBackend, FakeProducer, alias, store_model
from tests.unit.test_serving import frame as serving_frame

NOW = datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)


def frame(i: int, ingested_at: datetime) -> FrameValid:
    return serving_frame(i, ingested_at=ingested_at).event


class History:
    """Frames as a topic holds them; ``since`` seeks by time as record timestamps do. It also
    returns the last frame ingested before ``at``: a record is stamped when it is sent, after
    ingest set ``ingested_at``, so a frame ingested just before the cut can be sent just
    after it, and the replay must skip it."""

    def __init__(self, frames: list[FrameValid]) -> None:
        self.frames = frames
        self.asked: list[datetime] = []

    def since(self, at: datetime) -> Iterator[FrameValid]:
        self.asked.append(at)
        earlier = [f for f in self.frames if f.ingested_at < at][-1:]
        yield from earlier + [f for f in self.frames if f.ingested_at >= at]


def registered(ref: ModelRef, taken_at: datetime | None) -> ModelLifecycle:
    trained = trained_event(MODEL, ref.version, ref.uri, ref.sha256, taken_at=taken_at)
    return ModelLifecycle(
        model_name=MODEL,
        action="registered",
        model_version=ref.version,
        details=trained.model_dump(mode="json"),
    )


Parts = tuple[ServingCore, CountingBackend, FakeProducer, ArtifactStore]


@pytest.fixture
def parts(tmp_path: Path) -> Parts:
    store = ArtifactStore(tmp_path)
    core = ServingCore(store)
    return core, CountingBackend(core), FakeProducer(), store


def shadow_of(producer: FakeProducer) -> list[Prediction]:
    return producer.of(Topics.PREDICTIONS_SHADOW)


def test_the_tracker_carries_the_data_cut_of_the_lineage(parts: Parts) -> None:
    _, _, _, store = parts
    ref = store_model(store, 1)
    tracker = AliasTracker(MODEL)
    tracker.apply(registered(ref, NOW))
    tracker.apply(alias(ref.version, "challenger"))
    assert tracker.challenger is not None and tracker.challenger.data_cut == NOW
    older = store_model(store, 2)
    tracker.apply(registered(older, None))
    tracker.apply(alias(older.version, "challenger"))
    assert tracker.challenger is not None and tracker.challenger.data_cut is None


def test_only_frames_ingested_since_the_cut_are_scored_by_the_challenger(parts: Parts) -> None:
    core, backend, producer, store = parts
    ref = replace(store_model(store, 1), data_cut=NOW - timedelta(seconds=30))
    frames = [frame(i, NOW - timedelta(seconds=60 - i)) for i in range(60)]
    history = History(frames)
    replay = ShadowReplay(history, backend, producer, call_size=8, clock=lambda: NOW)
    thread = replay.start(ref, core.classes(ref))
    assert thread is not None
    thread.join(30)
    scored = {p.frame_id for p in shadow_of(producer)}
    assert scored == {f"f{i}" for i in range(30, 60)}  # f29 came before the cut: not scored
    assert all(p.shadow and p.model_version == ref.version for p in shadow_of(producer))
    assert history.asked[-1] == NOW - timedelta(seconds=30)
    assert {size for _, size in backend.calls} <= {8, 6}


def test_the_replay_reaches_back_at_most_max_age(parts: Parts) -> None:
    core, backend, producer, store = parts
    ref = replace(store_model(store, 1), data_cut=NOW - timedelta(hours=1))
    frames = [frame(i, NOW - timedelta(seconds=200 - i)) for i in range(200)]
    replay = ShadowReplay(History(frames), backend, producer, max_age_s=120, clock=lambda: NOW)
    assert replay.since(ref) == NOW - timedelta(seconds=120)
    replay._wanted = ref.version
    assert replay.run(ref, core.classes(ref), NOW - timedelta(seconds=120)) == 120
    assert len(shadow_of(producer)) == 120


def test_the_replay_starts_no_earlier_than_the_champion_began_serving(parts: Parts) -> None:
    core, backend, producer, store = parts
    ref = replace(store_model(store, 1), data_cut=NOW - timedelta(seconds=60))
    history = History([frame(i, NOW - timedelta(seconds=60 - i)) for i in range(60)])
    replay = ShadowReplay(history, backend, producer, clock=lambda: NOW)
    assert replay.since(ref, NOW - timedelta(seconds=20)) == NOW - timedelta(seconds=20)
    assert replay.since(ref, NOW - timedelta(seconds=90)) == NOW - timedelta(seconds=60)
    thread = replay.start(ref, core.classes(ref), champion_since=NOW - timedelta(seconds=20))
    assert thread is not None
    thread.join(30)
    assert {p.frame_id for p in shadow_of(producer)} == {f"f{i}" for i in range(40, 60)}


def test_no_replay_without_a_data_cut_or_when_turned_off(parts: Parts) -> None:
    core, backend, producer, store = parts
    ref = store_model(store, 1)
    history = History([frame(i, NOW - timedelta(seconds=5)) for i in range(10)])
    replay = ShadowReplay(history, backend, producer, clock=lambda: NOW)
    assert replay.start(ref, core.classes(ref)) is None
    off = ShadowReplay(history, backend, producer, max_age_s=0, clock=lambda: NOW)
    assert off.start(replace(ref, data_cut=NOW - timedelta(seconds=10)), core.classes(ref)) is None
    assert history.asked == [] and producer.sent == []


def test_a_newer_challenger_or_stop_ends_the_replay_at_its_next_chunk(parts: Parts) -> None:
    core, backend, producer, store = parts
    ref = replace(store_model(store, 1), data_cut=NOW - timedelta(seconds=100))
    frames = [frame(i, NOW - timedelta(seconds=100 - i)) for i in range(100)]
    replay = ShadowReplay(History(frames), backend, producer, call_size=10, clock=lambda: NOW)
    replay._wanted = ref.version
    calls = 0
    submit = backend.submit

    def stop_after_two(r: ModelRef, px: np.ndarray) -> object:
        nonlocal calls
        calls += 1
        if calls == 2:
            replay.follow(None, NOW)  # the challenger was promoted or removed
        return submit(r, px)

    backend.submit = stop_after_two  # type: ignore[assignment]
    assert replay.run(ref, core.classes(ref), NOW - timedelta(seconds=100)) == 20
    assert len(shadow_of(producer)) == 20


def test_a_failing_replay_is_logged_and_counted_never_raised(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    core, _, producer, store = parts
    ref = replace(store_model(store, 1), data_cut=NOW - timedelta(seconds=10))

    class Broken:
        def since(self, at: datetime) -> Iterator[FrameValid]:
            raise ConnectionError("broker unreachable")
            yield  # pragma: no cover

    replay = ShadowReplay(Broken(), core, producer, clock=lambda: NOW)
    failures = REPLAY_FAILURES._value.get()
    thread = replay.start(ref, core.classes(ref))
    assert thread is not None
    thread.join(10)
    assert producer.sent == []
    assert REPLAY_FAILURES._value.get() == failures + 1
    [record] = [r for r in caplog.records if r.getMessage().startswith("shadow replay failed")]
    assert "broker unreachable" in record.__dict__["error"]


def test_the_ingress_tells_each_change_of_challenger(parts: Parts) -> None:
    core, backend, producer, store = parts
    told: list[str | None] = []
    sinces: list[datetime] = []
    clock = iter(NOW + timedelta(seconds=s) for s in range(100))

    def tell(challenger: tuple[ModelRef, tuple[str, ...]] | None, since: datetime) -> None:
        told.append(challenger[0].version if challenger else None)
        sinces.append(since)

    ingress = Ingress(
        MODEL,
        backend=backend,
        verifier=core,
        producer=producer,
        clock=lambda: next(clock),
        on_challenger=tell,
    )
    champion, challenger = store_model(store, 1), store_model(store, 2)
    for ref in (champion, challenger):
        ingress.on_lifecycle(registered(ref, NOW))
    ingress.on_lifecycle(alias(champion.version))
    ingress.on_lifecycle(alias(challenger.version, "challenger"))
    assert told == []  # history before caught up: nothing adopted, nothing replayed
    ingress.caught_up()
    assert told == [challenger.version]
    ingress.on_lifecycle(alias(champion.version))  # the same champion again: no change
    assert told == [challenger.version]
    ingress.on_lifecycle(alias(challenger.version))  # promoted: the challenger alias clears
    assert told == [challenger.version, None]
    # Each time with the moment the champion it serves was adopted (the clock's second and
    # third readings: the construction took the first).
    assert sinces == [NOW + timedelta(seconds=1), NOW + timedelta(seconds=2)]
