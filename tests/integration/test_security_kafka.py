"""StreamLoop against a broker that only accepts SASL/SCRAM-SHA-512 over TLS.

Every kind of client reaches it through ``KafkaSettings`` alone: kafka-python's admin,
producer and consumer, a ``ConsumerLoop`` service and a faust (aiokafka) service configured
by ``STREAMLOOP_KAFKA_*`` variables. Clients without the right protocol, password or CA are
refused, and the password never shows up in a service's log.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError

from shared.bus import EventProducer
from shared.events import FrameValid, Label, decode
from shared.sdk import FramePublisher
from shared.settings import KafkaSettings
from shared.topics import TOPICS, Topics, provision
from tests.conftest import new_prefix
from tests.integration.helpers import Proc, free_port, read_all, wait_for
from tests.integration.secure_kafka import SecureBroker, missing_tools

pytestmark = pytest.mark.timeout(180)

SERVICE_TOPICS = [
    Topics.FRAMES_RAW,
    Topics.FRAMES_VALID,
    Topics.FRAMES_DLQ,
    Topics.LABELS,
    Topics.EXAMPLES,
    Topics.EVENTS_DLQ,
]
REFUSAL_TIMEOUT_MS = 3_000
"""How long a refused client keeps trying to bootstrap before it gives up."""


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    missing = missing_tools()
    if missing:
        pytest.skip(f"a SASL_SSL broker needs {' and '.join(missing)} on PATH")
    secure = SecureBroker.start(tmp_path_factory.mktemp("secure-kafka"))
    try:
        yield secure
    finally:
        secure.stop()


@pytest.fixture(scope="module")
def services(
    broker: SecureBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Proc, Proc]]:
    """ingest (kafka-python ConsumerLoop) and labelling (faust) as processes configured by
    environment variables only; both start at once so their start-ups overlap."""
    prefix = new_prefix()
    provision(broker.settings(topic_prefix=prefix), [TOPICS[name] for name in SERVICE_TOPICS])
    state = tmp_path_factory.mktemp("services")
    env = {
        **broker.env(),
        "STREAMLOOP_KAFKA_TOPIC_PREFIX": prefix,
        "STREAMLOOP_TELEMETRY_TRACES_DIR": str(state / "traces"),
    }
    ingest = Proc(
        ["-m", "services.ingest"],
        env={
            **env,
            "STREAMLOOP_INGEST_PROVISION_TOPICS": "false",
            "STREAMLOOP_INGEST_METRICS_PORT": str(free_port()),
            "STREAMLOOP_INGEST_GROUP_ID": f"{prefix}ingest",
        },
    )
    labelling = Proc(
        ["-m", "services.labelling"],
        env={
            **env,
            "STREAMLOOP_LABELLING_PROVISION_TOPICS": "false",
            "STREAMLOOP_LABELLING_METRICS_PORT": str(free_port()),
            # faust keeps its state in "<app id>-data" under the working directory otherwise.
            "F_DATADIR": str(state / "faust"),
        },
    )
    try:
        yield prefix, ingest, labelling
    finally:
        for proc in (ingest, labelling):
            proc.kill()


def test_kafka_python_clients_provision_publish_and_consume_with_settings_alone(
    broker: SecureBroker, prefix: str
) -> None:
    settings = broker.settings(topic_prefix=prefix)
    report = provision(settings, [TOPICS[Topics.LABELS], TOPICS[Topics.EVENTS_DLQ]])
    assert sorted(report.created) == [prefix + Topics.EVENTS_DLQ, prefix + Topics.LABELS]

    labels = [Label(frame_id=f"f-{i}", label="car", annotator="security-test") for i in range(3)]
    with EventProducer(settings, client_id="security-test") as producer:
        acks = [producer.publish(Topics.LABELS, lab, key=lab.frame_id) for lab in labels]
        producer.flush(30)
        assert all(ack.get(10).offset >= 0 for ack in acks)

    records = read_all(settings, prefix + Topics.LABELS, len(labels), timeout_s=30)
    got = sorted(decode(r.value, Label).event_id for r in records)
    assert got == sorted(lab.event_id for lab in labels)


def test_ingest_and_labelling_run_over_sasl_ssl_configured_by_environment_only(
    broker: SecureBroker, services: tuple[str, Proc, Proc]
) -> None:
    prefix, ingest, labelling = services
    settings = broker.settings(topic_prefix=prefix)
    frame_id = f"sec-{uuid.uuid4().hex[:8]}"
    px = np.random.default_rng(7).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with FramePublisher(settings, camera_id="cam-sec") as frames:
        frames.publish(px, frame_id=frame_id)

    valid = read_all(settings, prefix + Topics.FRAMES_VALID, 1, timeout_s=45, alive=ingest.alive)
    assert [decode(r.value, FrameValid).frame_id for r in valid] == [frame_id], ingest.lines[-20:]

    with EventProducer(settings, client_id="security-test") as producer:
        producer.publish(Topics.LABELS, Label(frame_id=frame_id, label="bus"), key=frame_id)
    examples = read_all(settings, prefix + Topics.EXAMPLES, 1, timeout_s=60, alive=labelling.alive)
    assert [json.loads(r.value)["label"] for r in examples] == ["bus"], labelling.lines[-20:]
    assert json.loads(examples[0].value)["frame_id"] == frame_id


def test_the_password_never_reaches_a_log(
    broker: SecureBroker, services: tuple[str, Proc, Proc]
) -> None:
    _, ingest, labelling = services
    # Past start-up: both have connected, authenticated and joined their groups.
    wait_for(lambda: any("consumer started" in ln for ln in ingest.lines), 45, what="ingest")
    wait_for(
        lambda: labelling.alive() and any("Worker ready" in ln for ln in labelling.lines),
        60,
        what="labelling ready",
    )
    for proc in (ingest, labelling):
        assert proc.lines, "the service logged nothing"
        leaked = [ln for ln in proc.lines if broker.password in ln]
        assert not leaked, leaked[:3]
    assert broker.password not in broker.log_text()


def _attempts(settings: KafkaSettings) -> dict[str, Callable[[], object]]:
    """Listing topics and producing a record, each giving up after REFUSAL_TIMEOUT_MS."""
    kwargs = {**settings.client_kwargs(), "bootstrap_timeout_ms": REFUSAL_TIMEOUT_MS}

    def list_topics() -> object:
        admin = KafkaAdminClient(**kwargs)
        try:
            return admin.list_topics()
        finally:
            admin.close()

    def produce() -> object:
        producer = KafkaProducer(max_block_ms=REFUSAL_TIMEOUT_MS, **kwargs)
        try:
            return producer.send(settings.topic_prefix + Topics.LABELS, b"{}").get(5)
        finally:
            producer.close(timeout=1)

    return {"list topics": list_topics, "produce": produce}


def _outcome(attempt: Callable[[], object]) -> object:
    """What ``attempt`` returned, or the Kafka error it raised (anything else propagates)."""
    try:
        return attempt()
    except KafkaError as exc:
        return exc


@pytest.fixture(scope="module")
def probe_prefix(broker: SecureBroker) -> str:
    """A topic prefix under which the probes of ``_attempts`` succeed with the right settings,
    so that a refusal below can only come from what a case changed."""
    prefix = new_prefix()
    provision(broker.settings(topic_prefix=prefix), [TOPICS[Topics.LABELS]])
    for what, attempt in _attempts(broker.settings(topic_prefix=prefix)).items():
        outcome = _outcome(attempt)
        assert not isinstance(outcome, KafkaError), f"{what} with the right settings: {outcome!r}"
    return prefix


@pytest.mark.parametrize(
    ("case", "broker_says", "client_says"),
    [
        pytest.param("plaintext", "SSL handshake failed", "", id="plaintext"),
        pytest.param(
            "wrong password",
            "invalid credentials with SASL mechanism SCRAM-SHA-512",
            "",
            id="wrong-password",
        ),
        pytest.param("no CA", "SSL handshake failed", "CERTIFICATE_VERIFY_FAILED", id="no-ca"),
    ],
)
def test_a_client_without_the_right_protocol_password_or_ca_is_refused(
    broker: SecureBroker,
    probe_prefix: str,
    caplog: pytest.LogCaptureFixture,
    case: str,
    broker_says: str,
    client_says: str,
) -> None:
    overrides: dict[str, object] = {
        "plaintext": {"security_protocol": "PLAINTEXT", "sasl_mechanism": None},
        "wrong password": {"sasl_password": "not-" + broker.password[::-1]},
        "no CA": {"ssl_cafile": None},
    }[case]
    settings = broker.settings(topic_prefix=probe_prefix, **overrides)
    seen = len(broker.log_text())
    attempts = _attempts(settings)
    with ThreadPoolExecutor(len(attempts)) as pool:
        outcomes = dict(zip(attempts, pool.map(_outcome, attempts.values()), strict=True))
    for what, outcome in outcomes.items():
        assert isinstance(outcome, KafkaError), f"{case}: {what} was not refused: {outcome!r}"
    wait_for(
        lambda: any(
            "Failed authentication with /127.0.0.1" in line and broker_says in line
            for line in broker.log_text()[seen:].splitlines()
        ),
        10,
        what=f"the broker to log why it refused the {case} client",
    )
    # Only the client knows that it was its own check of the broker's certificate that failed.
    assert client_says in caplog.text
