from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from shared.settings import (
    KafkaSettings,
    RedisSettings,
    ServiceSettings,
    TelemetrySettings,
    service_config,
)


class IngestLike(ServiceSettings):
    model_config = service_config("testsvc")

    batch_size: int = 10


def test_shared_prefixes_reach_every_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMLOOP_KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("STREAMLOOP_REDIS_URL", "redis://r:6379/2")
    monkeypatch.setenv("STREAMLOOP_TESTSVC_BATCH_SIZE", "64")
    s = IngestLike()
    assert s.kafka.client_kwargs()["bootstrap_servers"] == ["k1:9092", "k2:9092"]
    assert s.redis.url == "redis://r:6379/2"
    assert s.batch_size == 64


def test_service_prefix_overrides_a_connection_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMLOOP_TESTSVC_KAFKA__BOOTSTRAP_SERVERS", "only-me:9092")
    assert IngestLike().kafka.bootstrap_servers == "only-me:9092"


def test_settings_are_frozen() -> None:
    with pytest.raises(ValidationError):
        IngestLike().batch_size = 3  # type: ignore[misc]


def test_sasl_and_ssl_are_passed_through() -> None:
    k = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password=SecretStr("s3cret"),
        ssl_cafile="/ca.pem",
    )
    kw = k.client_kwargs()
    assert kw["security_protocol"] == "SASL_SSL"
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_username"] == "svc" and kw["sasl_plain_password"] == "s3cret"
    assert kw["ssl_cafile"] == "/ca.pem"
    assert "s3cret" not in repr(k)


def test_sasl_without_mechanism_is_refused() -> None:
    with pytest.raises(ValidationError):
        KafkaSettings(security_protocol="SASL_PLAINTEXT")


def test_production_refuses_default_or_empty_secrets() -> None:
    with pytest.raises(ValidationError, match=r"redis\.password"):
        IngestLike(environment="production")
    with pytest.raises(ValidationError, match=r"redis\.password"):
        IngestLike(
            environment="production", redis=RedisSettings(password=SecretStr("streamloop-dev"))
        )
    ok = IngestLike(environment="production", redis=RedisSettings(password=SecretStr("a-real-one")))
    assert ok.environment == "production"


def test_exporter_auto_follows_the_otlp_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert TelemetrySettings().resolved_exporter() == "jsonl"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318")
    assert TelemetrySettings().resolved_exporter() == "otlp"
    assert TelemetrySettings(exporter="memory").resolved_exporter() == "memory"


def test_environment_and_metrics_port_apply_to_every_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMLOOP_ENVIRONMENT", "production")
    monkeypatch.setenv("STREAMLOOP_METRICS_PORT", "9400")
    monkeypatch.setenv("STREAMLOOP_REDIS_PASSWORD", "a-real-one-of-some-length")
    s = IngestLike()
    assert (s.environment, s.metrics_port) == ("production", 9400)
    # The shared value reaches the secret check: a default password is refused.
    monkeypatch.setenv("STREAMLOOP_REDIS_PASSWORD", "streamloop-dev")
    with pytest.raises(ValidationError, match=r"redis\.password"):
        IngestLike()
    # A service's own variable wins.
    monkeypatch.setenv("STREAMLOOP_REDIS_PASSWORD", "a-real-one-of-some-length")
    monkeypatch.setenv("STREAMLOOP_TESTSVC_METRICS_PORT", "9500")
    assert IngestLike().metrics_port == 9500


def test_the_frame_path_fetches_in_batches_and_each_service_can_change_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.ingest.settings import IngestSettings
    from services.serving.settings import ServingSettings

    assert IngestSettings().fetch.consumer_kwargs() == {
        "fetch_min_bytes": 262_144,
        "fetch_max_wait_ms": 100,
    }
    monkeypatch.setenv("STREAMLOOP_SERVING_FETCH__MAX_WAIT_MS", "3")
    monkeypatch.setenv("STREAMLOOP_SERVING_FETCH__MIN_BYTES", "1")
    assert ServingSettings().fetch.consumer_kwargs() == {
        "fetch_min_bytes": 1,
        "fetch_max_wait_ms": 3,
    }
    assert IngestSettings().fetch.max_wait_ms == 100, "one service's setting stays its own"


def test_transactions_are_off_by_default_and_on_use_an_id_stable_per_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket

    from services.ingest.settings import IngestSettings
    from services.serving.settings import ServingSettings

    monkeypatch.setenv("STREAMLOOP_KAFKA_TOPIC_PREFIX", "t1.")
    assert IngestSettings().transactions.transactional_id(KafkaSettings(), "g") is None
    monkeypatch.setenv("STREAMLOOP_INGEST_TRANSACTIONS__ENABLED", "true")
    monkeypatch.setenv("STREAMLOOP_SERVING_TRANSACTIONS__ENABLED", "true")
    ingest = IngestSettings()
    assert ingest.transactions.transactional_id(ingest.kafka, "g") == (
        f"t1.g-{socket.gethostname()}"
    )
    monkeypatch.setenv("STREAMLOOP_SERVING_TRANSACTIONS__ID", "serving-7")
    monkeypatch.setenv("STREAMLOOP_INGEST_TRANSACTIONS__ENABLED", "false")
    serving = ServingSettings()
    assert serving.transactions.transactional_id(serving.kafka, "g") == "serving-7"
    assert IngestSettings().transactions.transactional_id(ingest.kafka, "g") is None
    monkeypatch.setenv("STREAMLOOP_SERVING_TRANSACTIONS__TIMEOUT_MS", "10")
    with pytest.raises(ValidationError):
        ServingSettings()


def test_the_fit_policy_is_the_tasks_and_the_old_resize_switch_means_stretch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.serving.settings import ServingSettings
    from shared.settings import TaskSettings

    assert TaskSettings().image_fit == "letterbox"
    monkeypatch.setenv("STREAMLOOP_TASK_IMAGE_FIT", "center-crop")
    assert IngestLike().task.image_fit == ServingSettings().task.image_fit == "center-crop"
    monkeypatch.setenv("STREAMLOOP_TASK_IMAGE_FIT", "squash")
    with pytest.raises(ValidationError, match="letterbox"):
        TaskSettings()
    monkeypatch.delenv("STREAMLOOP_TASK_IMAGE_FIT")
    monkeypatch.setenv("STREAMLOOP_INGEST_RESIZE", "true")
    assert TaskSettings().image_fit == "stretch"
    monkeypatch.setenv("STREAMLOOP_INGEST_RESIZE", "false")
    assert TaskSettings().image_fit == "letterbox"
    monkeypatch.setenv("STREAMLOOP_INGEST_RESIZE", "1")
    monkeypatch.setenv("STREAMLOOP_TASK_IMAGE_FIT", "refuse")
    assert TaskSettings().image_fit == "refuse", "the new setting wins"


def test_ingest_limits_bytes_and_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.ingest.settings import IngestSettings

    defaults = IngestSettings()
    assert (defaults.max_image_bytes, defaults.max_pixels) == (8_000_000, 4096 * 4096)
    monkeypatch.setenv("STREAMLOOP_INGEST_MAX_PIXELS", "1000000")
    monkeypatch.setenv("STREAMLOOP_INGEST_MAX_IMAGE_BYTES", "9000000")
    assert (IngestSettings().max_pixels, IngestSettings().max_image_bytes) == (
        1_000_000,
        9_000_000,
    )
    for name, value in (
        ("STREAMLOOP_INGEST_MAX_PIXELS", str(64 * 1024 * 1024 + 1)),
        ("STREAMLOOP_INGEST_MAX_IMAGE_BYTES", "9000001"),
    ):
        with monkeypatch.context() as m:
            m.setenv(name, value)
            with pytest.raises(ValidationError):
                IngestSettings()
