"""The registry SIGKILLed while it answers a run of promotions, and started again. Its start
replays ``models.lifecycle`` and answers only the commands the log shows unanswered, so each
command gets exactly one answer; the champion afterwards is the one the last command named, no
other version holds the alias, and the Redis read model equals one rebuilt from Kafka alone."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import pytest

from shared.commands import lifecycle_command
from shared.events import ModelLifecycle, decode
from shared.redis_registry import RedisRegistry
from shared.redis_store import connect
from shared.registry import RegistryView, lifecycle_key
from shared.settings import RedisSettings
from shared.topics import Topics
from tests.chaos.conftest import Infra, Pipeline, record
from tests.integration.helpers import read_all, wait_for
from tests.synthetic import trained_event

pytestmark = pytest.mark.timeout(600)

COMMANDS = 40


def _register(pipeline: Pipeline, version: str) -> None:
    trained = trained_event(pipeline.model, version, f"file:///nowhere/{version}", "0" * 64)
    ev = ModelLifecycle(
        model_name=pipeline.model,
        action="registered",
        model_version=version,
        details=trained.model_dump(mode="json"),
    )
    pipeline.producer.publish(Topics.MODELS_LIFECYCLE, ev, key=lifecycle_key(ev))


def _log(pipeline: Pipeline) -> list[ModelLifecycle]:
    recs = read_all(pipeline.kafka, pipeline.prefix + Topics.MODELS_LIFECYCLE, 10**6, 2)
    return [decode(r.value, ModelLifecycle) for r in recs if r.value is not None]


def _same(a: RegistryView, b: RegistryView) -> bool:
    return (
        a.versions == b.versions
        and a.aliases == b.aliases
        and [h.event_id for h in a.history] == [h.event_id for h in b.history]
    )


def test_the_registry_killed_mid_promotions_answers_each_command_once(
    infra: Infra, pipeline: Pipeline
) -> None:
    registry = RedisRegistry(connect(RedisSettings(url=infra.redis_url)))
    for version in ("aaaaaaaaaaaa", "bbbbbbbbbbbb"):
        _register(pipeline, version)
    pipeline.producer.flush()
    first = pipeline.start("registry", STREAMLOOP_REGISTRY_API_PORT="0")
    commands = [
        lifecycle_command(
            pipeline.model,
            "promote_requested",
            ("bbbbbbbbbbbb", "aaaaaaaaaaaa")[i % 2],
            actor="chaos",
            reason=f"promotion {i + 1} of {COMMANDS}",
        )
        for i in range(COMMANDS)
    ]
    ids = {c.event_id for c in commands}

    def send() -> None:
        for c in commands:
            pipeline.producer.publish(Topics.MODELS_LIFECYCLE, c, key=lifecycle_key(c))
            pipeline.producer.flush()
            time.sleep(0.05)

    def answers() -> Counter[str]:
        return Counter(
            e.cause_id
            for e in _log(pipeline)
            if e.cause_id in ids and (e.alias == "champion" or e.action == "command_rejected")
        )

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    wait_for(lambda: len(answers()) >= 10 or None, 60, what="ten promotions answered")
    os.kill(first.p.pid, signal.SIGKILL)
    first.p.wait(10)
    killed_at, answered_at_kill = time.monotonic(), len(answers())
    second = pipeline.start("registry", STREAMLOOP_REGISTRY_API_PORT="0")
    sender.join(60)
    done = wait_for(
        lambda: a if len(a := answers()) == COMMANDS else None,
        120,
        what=f"all {COMMANDS} commands answered",
    )
    settled_s = time.monotonic() - killed_at
    last = commands[-1].model_version

    def settled() -> RegistryView | None:
        v = registry.view(pipeline.model)
        return v if v.aliases.get("champion") == last else None

    before = wait_for(settled, 60, what="the read model at the last promotion")
    # The same read model from the log alone: stopped, Redis emptied, started again.
    second.p.send_signal(signal.SIGTERM)
    second.p.wait(30)
    for key in registry._redis.scan_iter(f"streamloop:registry:{pipeline.model}:*"):
        registry._redis.delete(key)
    pipeline.start("registry", STREAMLOOP_REGISTRY_API_PORT="0")
    rebuilt = wait_for(
        lambda: (v := registry.view(pipeline.model)).versions and v, 60, what="the rebuild"
    )
    record(
        "registry_killed",
        {
            "fault": "registry killed",
            "injected": f"SIGKILL of the registry (pid {first.p.pid}) after {answered_at_kill} "
            f"of {COMMANDS} promotions (20 a second) were answered, restarted at once",
            "frames_in": f"{COMMANDS} commands",
            "lost": COMMANDS - len(done),
            "duplicated": sum(n - 1 for n in done.values()),
            "recovery_s": round(settled_s, 1),
        },
    )
    assert 0 < answered_at_kill < COMMANDS, "killed in the middle of the run"
    assert set(done) == ids and set(done.values()) == {1}, done
    champions = [v.version for v in before.versions if "champion" in v.aliases]
    assert champions == [last]
    assert _same(before, rebuilt), (before.aliases, rebuilt.aliases)
