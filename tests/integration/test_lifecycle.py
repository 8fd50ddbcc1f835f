"""The model lifecycle against real Kafka, Redis and torch: training, evaluation and registry
as processes, fed examples rendered by the simulator's renderer.

One module-scoped deployment runs the whole story in order: bootstrap to a champion, a
corrupted candidate refused, idempotent requests, a training killed mid-run, and the read
model rebuilt from the topic after Redis loses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.artifacts import ArtifactStore
from shared.bus import EventProducer
from shared.datasets import split_of
from shared.events import (
    Example,
    ModelEvaluated,
    ModelTrained,
    RetrainRequest,
    TrainingProgress,
    decode,
)
from shared.redis_registry import RedisRegistry
from shared.redis_store import connect
from shared.registry import RegistryView
from shared.settings import KafkaSettings, RedisSettings
from shared.topics import Topics
from tests.conftest import new_prefix, provision_prefixed
from tests.integration.helpers import Proc, read_all, wait_for
from tests.synthetic import render_examples

pytestmark = pytest.mark.timeout(600)

TOPICS = [
    Topics.EXAMPLES,
    Topics.RETRAIN_REQUESTS,
    Topics.TRAINING_PROGRESS,
    Topics.MODELS_TRAINED,
    Topics.MODELS_EVALUATED,
    Topics.MODELS_LIFECYCLE,
    Topics.ALERTS,
    Topics.EVENTS_DLQ,
]


class Deployment:
    def __init__(self, kafka: KafkaSettings, prefix: str, root: Path) -> None:
        self.kafka = kafka.model_copy(update={"topic_prefix": prefix})
        self.prefix = prefix
        self.model = f"m-{uuid.uuid4().hex[:8]}"
        self.root = root
        self.procs: dict[str, Proc] = {}
        self.producer = EventProducer(self.kafka, client_id="test")
        self.registry = RedisRegistry(connect(RedisSettings()))
        self.published: list[Example] = []

    def env(self, service: str, **extra: str) -> dict[str, str]:
        up = service.upper()
        return {
            "STREAMLOOP_KAFKA_TOPIC_PREFIX": self.prefix,
            "STREAMLOOP_ARTIFACTS_ROOT": str(self.root / "artifacts"),
            "STREAMLOOP_TELEMETRY_TRACES_DIR": str(self.root / "traces"),
            f"STREAMLOOP_{up}_PROVISION_TOPICS": "false",
            f"STREAMLOOP_{up}_MODEL_NAME": self.model,
            **extra,
        }

    def start(self, service: str, **extra: str) -> Proc:
        proc = Proc(["-m", f"services.{service}"], env=self.env(service, **extra))
        self.procs[service] = proc
        wait_for(
            lambda: any('"consumer started"' in ln for ln in proc.lines) or not proc.alive(),
            90,
            what=f"{service} ready",
        )
        assert proc.alive(), f"{service} died at start-up"
        return proc

    def start_training(self, **extra: str) -> Proc:
        return self.start(
            "training",
            STREAMLOOP_TRAINING_HYPERPARAMETERS__EPOCHS="4",
            STREAMLOOP_TRAINING_POLICY__RECENT_EXAMPLES="700",
            STREAMLOOP_TRAINING_POLICY__OLDER_PER_CLASS="40",
            STREAMLOOP_TRAINING_POLICY__MIN_TRAIN_EXAMPLES="100",
            STREAMLOOP_TRAINING_BOOTSTRAP_MIN_EXAMPLES="600",
            STREAMLOOP_TRAINING_BOOTSTRAP_INTERVAL_S="1",
            STREAMLOOP_TRAINING_LEASE_S="6",
            **extra,
        )

    def start_registry(self) -> Proc:
        return self.start("registry", STREAMLOOP_REGISTRY_API_PORT="0")

    def publish_examples(self, examples: list[Example]) -> None:
        for ex in examples:
            self.producer.publish(Topics.EXAMPLES, ex, key=ex.frame_id)
        self.producer.flush()
        self.published.extend(examples)

    def retrain(self, key: str, reason: str = "test") -> None:
        self.producer.publish(
            Topics.RETRAIN_REQUESTS,
            RetrainRequest(
                model_name=self.model, idempotency_key=key, reason=reason, trigger="operator"
            ),
            key=self.model,
        )
        self.producer.flush()

    def events(
        self, topic: str, cls: type[Any], expect: int = 10**6, timeout_s: float = 2
    ) -> list[Any]:
        recs = read_all(self.kafka, self.prefix + topic, expect, timeout_s=timeout_s)
        return [decode(r.value, cls) for r in recs if r.value is not None]

    def view(self) -> RegistryView:
        return self.registry.view(self.model)

    def api(self, path: str) -> Any:
        line = next(ln for ln in self.procs["registry"].lines if "registry api listening" in ln)
        url = json.loads(line)["url"]
        with urllib.request.urlopen(url + path, timeout=5) as resp:
            return json.loads(resp.read())

    def close(self) -> None:
        for proc in self.procs.values():
            proc.kill()
        self.producer.close()
        for key in self.registry_keys():
            self.registry._redis.delete(key)

    def registry_keys(self) -> list[bytes]:
        return list(self.registry._redis.scan_iter(f"streamloop:registry:{self.model}:*"))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    kafka = KafkaSettings()
    prefix = new_prefix()
    provision_prefixed(kafka, prefix, TOPICS)
    d = Deployment(kafka, prefix, tmp_path_factory.mktemp("lifecycle"))
    try:
        yield d
    finally:
        # Shown by pytest only when a test failed.
        for name, proc in d.procs.items():
            print(f"--- {name} (exit {proc.p.returncode})", *proc.lines[-40:], sep="\n")
        d.close()


def test_a_day_stream_bootstraps_a_champion_with_exact_lineage(deployment: Deployment) -> None:
    d = deployment
    d.publish_examples(render_examples(900, seed=11, prefix=d.model))
    d.start_registry()
    d.start("evaluation")
    d.start_training()

    champion = wait_for(lambda: d.view().champion(), 240, what="a champion")
    assert champion.status == "blessed" and champion.number == 1
    assert champion.tags["trigger"] == "bootstrap"
    assert champion.parent_version is None and champion.seed == 0
    assert champion.code_version and champion.evaluation is not None
    assert champion.evaluation.champion_version is None  # floor only
    assert champion.fresh_accuracy is not None and champion.fresh_accuracy > 0.6

    # The manifest names exactly the examples used, all from this stream, none held out.
    manifest = json.loads((d.root / "artifacts" / champion.dataset.manifest_uri).read_bytes())
    ids = {row[0] for row in manifest["train"]}
    assert len(ids) == champion.dataset.size
    assert ids <= {e.frame_id for e in d.published}
    policy = champion.dataset.policy
    assert all(
        split_of(f, policy["holdout_share"], policy["reference_share"]) == "train" for f in ids
    )
    assert sum(champion.dataset.per_class.values()) == champion.dataset.size
    assert champion.dataset.topic_offsets and sum(champion.dataset.topic_offsets.values()) == 900

    assert d.api("/aliases") == {"champion": champion.version}
    assert d.api(f"/models/{champion.version}")["sha256"] == champion.sha256


def test_a_candidate_trained_on_corrupted_labels_is_rejected_and_the_champion_stays(
    deployment: Deployment,
) -> None:
    d = deployment
    before = d.view().champion()
    assert before is not None
    d.publish_examples(render_examples(900, seed=12, start=10_000, noise=0.9, prefix=d.model))
    d.retrain("corrupt")
    d.retrain("corrupt")  # the same key again: one training

    def verdict() -> ModelEvaluated | None:
        trained = [
            e
            for e in d.events(Topics.MODELS_TRAINED, ModelTrained)
            if e.idempotency_key == "corrupt"
        ]
        if not trained:
            return None
        evals = [
            e
            for e in d.events(Topics.MODELS_EVALUATED, ModelEvaluated)
            if e.model_version == trained[0].model_version
        ]
        return evals[0] if evals else None

    evaluated = wait_for(verdict, 240, what="the corrupted candidate's verdict")
    assert evaluated.verdict == "rejected"
    assert evaluated.champion_version == before.version
    assert any("reference" in r for r in evaluated.reasons), evaluated.reasons
    wait_for(
        lambda: (v := d.view().version(evaluated.model_version)) and v.status == "rejected", 30
    )
    assert d.view().champion() == before or d.view().champion().version == before.version  # type: ignore[union-attr]
    trained = [
        e for e in d.events(Topics.MODELS_TRAINED, ModelTrained) if e.idempotency_key == "corrupt"
    ]
    assert len(trained) == 1


def test_a_training_killed_mid_run_leaves_no_version_and_retrains_after_restart(
    deployment: Deployment,
) -> None:
    d = deployment
    versions_before = len(d.view().versions)
    # New examples, so this run's snapshot (and hence its weights and version) is new.
    d.publish_examples(render_examples(60, seed=13, start=20_000, prefix=d.model))
    d.retrain("killed")
    proc = d.procs["training"]
    wait_for(
        lambda: any('"epoch"' in ln and "killed" in ln for ln in proc.lines),
        120,
        interval_s=0.05,
        what="the first epoch",
    )
    os.kill(proc.p.pid, signal.SIGKILL)
    proc.p.wait(10)
    assert [
        e for e in d.events(Topics.MODELS_TRAINED, ModelTrained) if e.idempotency_key == "killed"
    ] == []
    assert len(d.view().versions) == versions_before

    d.start_training()
    trained = wait_for(
        lambda: [
            e
            for e in d.events(Topics.MODELS_TRAINED, ModelTrained)
            if e.idempotency_key == "killed"
        ],
        240,
        what="the retrained model",
    )
    assert len(trained) == 1
    wait_for(lambda: d.view().version(trained[0].model_version), 60, what="its registration")
    assert len(d.view().versions) == versions_before + 1


def test_a_training_killed_while_exporting_publishes_once_after_restart(
    deployment: Deployment,
) -> None:
    d = deployment
    versions_before = len(d.view().versions)
    d.publish_examples(render_examples(60, seed=17, start=30_000, prefix=d.model))
    d.retrain("killed-exporting")
    proc = d.procs["training"]
    wait_for(
        lambda: any('"exporting"' in ln and "killed-exporting" in ln for ln in proc.lines),
        240,
        interval_s=0.02,
        what="the export",
    )
    os.kill(proc.p.pid, signal.SIGKILL)
    proc.p.wait(10)

    def published() -> list[ModelTrained]:
        return [
            e
            for e in d.events(Topics.MODELS_TRAINED, ModelTrained)
            if e.idempotency_key == "killed-exporting"
        ]

    assert published() == []
    d.start_training()
    trained = wait_for(published, 240, what="the retrained model")
    assert len(trained) == 1 and trained[0].exports, trained
    # What the second run stored is whole: every export reads back with its digest.
    store = ArtifactStore(d.root / "artifacts")
    for ref in trained[0].exports.values():
        assert hashlib.sha256(store.resolve(ref.uri).read_bytes()).hexdigest() == ref.sha256
    wait_for(lambda: d.view().version(trained[0].model_version), 60, what="its registration")
    assert len(d.view().versions) == versions_before + 1


def test_the_read_model_is_rebuilt_from_the_topic_after_redis_loses_it(
    deployment: Deployment,
) -> None:
    d = deployment
    before = d.view()
    assert before.versions
    d.procs["registry"].kill()
    for key in d.registry_keys():
        d.registry._redis.delete(key)
    assert d.view().versions == []
    d.start_registry()
    after = wait_for(lambda: (v := d.view()).versions and v, 60, what="the rebuilt read model")
    assert after.versions == before.versions
    assert after.aliases == before.aliases
    assert [h.event_id for h in after.history] == [h.event_id for h in before.history]


def ray_train_workers() -> list[int]:
    """Pids of Ray Train's worker processes on this machine."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "RayTrainWorker" in line]


def test_a_retrain_on_ray_survives_a_lost_worker_and_is_blessed_with_a_local_lineage(
    deployment: Deployment,
) -> None:
    d = deployment
    local = next(
        e for e in d.events(Topics.MODELS_TRAINED, ModelTrained) if e.idempotency_key == "killed"
    )
    d.procs["training"].kill()
    # The reference holdout now holds the corrupted labels an earlier test published (about a
    # third of it): the champion scores 0.68 there, and two good models differ by 0.02 to 0.03
    # on it by chance. The champion is still the bootstrap (nothing here promotes), and the
    # fine-tune of it that this test trains (on clean frames and a sample of older examples,
    # corrupted ones among them) has scored from 0.06 below it to 0.02 above on the fresh
    # holdout, about 100 frames (seen: 0.962 / 0.943, 0.969 / 0.948, 0.917 / 0.981, 0.978 /
    # 0.966; in ten epochs 0.882 / 0.941 and 0.964 / 0.973). This gate allows a drop of
    # 0.12, so that it judges the fit and not those labels; the floor and the other checks are
    # the defaults.
    d.procs["evaluation"].kill()
    d.start("evaluation", STREAMLOOP_EVALUATION_THRESHOLDS__MAX_ACCURACY_DROP="0.12")
    # No RAY_ADDRESS: the training process starts a local Ray of this machine's two CPUs.
    # The fit's budget counts from its first epoch, so the restart after the lost worker
    # (30 s here, more on a loaded machine) spends it: a budget that ends the fit early would
    # judge the machine's load (six epochs took 80 to 87 s here, restart included; the default
    # budget is 110 s).
    proc = d.start_training(
        STREAMLOOP_TRAINING_BACKEND="ray",
        STREAMLOOP_TRAINING_RAY__WORKERS="2",
        STREAMLOOP_TRAINING_TIME_BUDGET_S="400",
    )
    # More clean examples than the recency window (700): the corrupted ones published above
    # stay out of this snapshot's training set and fresh holdout.
    d.publish_examples(render_examples(800, seed=19, start=40_000, prefix=d.model))
    d.retrain("on-ray")
    d.retrain("on-ray")  # the same key again: one training
    # A Ray Train worker SIGKILLed in the third epoch: the fit resumes from a checkpoint (the
    # first's at least: Ray Train registers a checkpoint a moment after its epoch is told).
    wait_for(
        lambda: any('"epoch": 2,' in ln and "on-ray" in ln for ln in proc.lines),
        300,
        interval_s=0.05,
        what="the second epoch on Ray",
    )
    workers = ray_train_workers()
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGKILL)

    def verdict() -> tuple[ModelTrained, ModelEvaluated] | None:
        trained = [
            e
            for e in d.events(Topics.MODELS_TRAINED, ModelTrained)
            if e.idempotency_key == "on-ray"
        ]
        evals = [
            e
            for e in d.events(Topics.MODELS_EVALUATED, ModelEvaluated)
            if trained and e.model_version == trained[0].model_version
        ]
        return (trained[0], evals[0]) if evals else None

    trained, evaluated = wait_for(verdict, 400, what="the candidate trained on Ray, judged")
    assert any('"ray fit"' in ln and '"workers": 2' in ln for ln in proc.lines)
    assert any('"ray fit resumed"' in ln for ln in proc.lines)
    assert evaluated.verdict == "blessed", (evaluated.reasons, trained.metrics)
    assert not trained.hyperparameters["stopped_by_budget"], trained.metrics
    assert trained.hyperparameters["backend"] == "ray" and trained.hyperparameters["workers"] == 2
    assert trained.init.startswith("champion:") and trained.parent_version
    # The same lineage as a local run: every field a local run records, this one records.
    recorded = {k for k, v in local.model_dump().items() if v not in (None, {}, [], "")}
    assert recorded <= {k for k, v in trained.model_dump().items() if v not in (None, {}, [], "")}
    assert trained.exports.keys() == local.exports.keys()
    progress = [
        p.epoch
        for p in d.events(Topics.TRAINING_PROGRESS, TrainingProgress)
        if p.idempotency_key == "on-ray"
    ]
    assert progress == list(range(1, int(trained.hyperparameters["epochs"]) + 1))  # rank 0's
    wait_for(
        lambda: any("already trained" in ln and "on-ray" in ln for ln in proc.lines),
        60,
        what="the repeated request recognised",
    )
    assert [
        e for e in d.events(Topics.MODELS_TRAINED, ModelTrained) if e.idempotency_key == "on-ray"
    ] == [trained]
