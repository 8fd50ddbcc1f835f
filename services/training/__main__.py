"""Run the training service: ``streamloop serve training`` or ``python -m services.training``."""

from __future__ import annotations

import logging
import sys
import threading
import uuid
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from prometheus_client import Counter, Histogram
from redis import RedisError

from services.training.service import Trainer, code_version
from services.training.settings import TrainingSettings
from shared.artifacts import ArtifactStore
from shared.bus import ConsumerLoop, Message, Publisher, RetryPolicy, stop_on_signals
from shared.datasets import ExampleTable, read_examples
from shared.events import RetrainRequest
from shared.redis_store import RedisLeases, connect
from shared.registry import RedisRegistry, RegistryReader
from shared.service import service_runtime
from shared.topics import Topics

log = logging.getLogger("streamloop.training")

REQUESTS = Counter(
    "streamloop_training_requests",
    "Retrain requests handled, by outcome (trained, duplicate, skipped, ignored).",
    ["outcome"],
)
DURATION = Histogram(
    "streamloop_training_duration_seconds",
    "Wall time of a training run, snapshot to published model.",
    buckets=(5, 15, 30, 60, 120, 300, 600),
)


def _code_version() -> str:
    try:
        pkg = version("streamloop")
    except PackageNotFoundError:
        pkg = "0+unknown"
    root = Path(__file__).resolve().parent.parent.parent
    files = [root / "shared" / "model.py", *sorted((root / "services" / "training").glob("*.py"))]
    return code_version(pkg, [f for f in files if f.exists()])


def example_count(consumer: KafkaConsumer, topic: str) -> int:
    """Records on the examples topic (end minus start offsets): an upper bound on the
    examples that exist, cheap enough to poll."""
    tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    if not tps:
        return 0
    ends, starts = consumer.end_offsets(tps), consumer.beginning_offsets(tps)
    return sum(ends[tp] - starts[tp] for tp in tps)


class Bootstrapper:
    """Until the registry has a champion, asks for a training once enough examples exist.

    The request's key is ``bootstrap:<model>:<versions registered>``: one request per state of
    the registry, so a rejected first model leads to a new attempt, never to a storm. A
    version still waiting for its verdict, or blessed and about to be crowned, is the answer
    to the last request: no new one is sent meanwhile."""

    def __init__(
        self,
        settings: TrainingSettings,
        registry: RegistryReader,
        publisher: Publisher,
        count_examples: Callable[[], int] | None = None,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._publisher = publisher
        self._count = count_examples or self._count_on_topic
        self._stop = threading.Event()
        self._sent: set[str] = set()
        self._consumer: KafkaConsumer | None = None  # one metadata client for every check

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> str | None:
        """One check; returns the idempotency key of the request it sent, if any."""
        s = self._settings
        view = self._registry.view(s.model_name)
        if view.champion() is not None or any(v.status != "rejected" for v in view.versions):
            return None
        key = f"bootstrap:{s.model_name}:{len(view.versions)}"
        if key in self._sent:
            return None
        count = self._count()
        if count < s.bootstrap_min_examples:
            return None
        self._publisher.publish(
            Topics.RETRAIN_REQUESTS,
            RetrainRequest(
                source="training",
                model_name=s.model_name,
                idempotency_key=key,
                reason=f"no champion yet and {count} examples available",
                trigger="bootstrap",
            ),
            key=s.model_name,
        )
        self._publisher.flush()
        self._sent.add(key)
        log.info("bootstrap retrain requested", extra={"key": key, "examples": count})
        return key

    def _count_on_topic(self) -> int:
        s = self._settings
        if self._consumer is None:
            self._consumer = KafkaConsumer(group_id=None, **s.kafka.client_kwargs())
        return example_count(self._consumer, s.kafka.topic_prefix + Topics.EXAMPLES)

    def run(self) -> None:
        try:
            while not self._stop.wait(self._settings.bootstrap_interval_s):
                try:
                    self.check()
                except (KafkaError, RedisError, OSError):
                    log.warning("bootstrap check failed; will retry", exc_info=True)
        finally:
            if self._consumer is not None:
                self._consumer.close()


def main() -> int:
    settings = TrainingSettings()
    owner = f"training-{uuid.uuid4().hex[:8]}"
    with service_runtime("training", settings) as rt:
        redis_client = connect(settings.redis)
        registry = RedisRegistry(redis_client)
        store = ArtifactStore(settings.artifacts.root)
        shape = (settings.task.image_height, settings.task.image_width, 3)

        def load_examples() -> ExampleTable:
            return read_examples(
                settings.kafka,
                shape=shape,
                classes=settings.task.classes,
                on_progress=lambda n, total: log.info(
                    "reading examples", extra={"read": n, "total": total}
                ),
            )

        trainer = Trainer(
            settings,
            load_examples=load_examples,
            store=store,
            leases=RedisLeases(redis_client, "streamloop:training:request"),
            registry=registry,
            publisher=rt.producer,
            owner=owner,
            code_version=_code_version(),
        )

        def handle(msg: Message[RetrainRequest]) -> None:
            with DURATION.time():
                outcome = trainer.handle(msg.event)
            REQUESTS.labels(outcome.status).inc()

        loop: ConsumerLoop[RetrainRequest] = ConsumerLoop(
            settings.kafka,
            group_id=settings.group_id,
            topics=[Topics.RETRAIN_REQUESTS],
            event_type=RetrainRequest,
            producer=rt.producer,
            handler=handle,
            tracer=rt.tracer,
            max_poll_records=1,
            client_id="training",
            retry=RetryPolicy(max_attempts=3, backoff_s=2.0, max_backoff_s=30.0),
            # A run holds the poll loop for up to the time budget plus reading and storing.
            max_poll_interval_ms=int((settings.time_budget_s + settings.lease_s + 300) * 1000),
        )
        bootstrapper = Bootstrapper(settings, registry, rt.producer)
        threads = []
        if settings.bootstrap:
            t = threading.Thread(target=bootstrapper.run, name="bootstrap", daemon=True)
            t.start()
            threads.append(t)
        stop_on_signals(loop, bootstrapper)
        log.info("training ready", extra={"owner": owner, "model": settings.model_name})
        try:
            loop.run()
        finally:
            bootstrapper.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
