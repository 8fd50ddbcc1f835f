"""The model lifecycle end to end, as an operator drives it: a simulated day stream through
ingest and labelling into examples, then ``streamloop retrain`` / ``models …`` against the
training, evaluation and registry services, and models imported from files by the CLI and by
the registry's HTTP API."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from shared.artifacts import ArtifactStore
from shared.model import ModelSpec, build_model
from shared.redis_registry import RedisRegistry
from shared.redis_store import connect
from shared.settings import KafkaSettings, RedisSettings
from shared.topics import Topics, provision
from tests.integration.helpers import Proc, read_all, wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(600)

SERVICES = ("ingest", "labelling", "registry", "evaluation", "training")
OPERATOR_TOKEN = "e2e-operator-" + "t" * 24
CLASSES = "car,truck,bus,motorcycle"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def stack(prefix: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    model = f"e2e-{uuid.uuid4().hex[:8]}"
    env = {
        "STREAMLOOP_KAFKA_TOPIC_PREFIX": prefix,
        "STREAMLOOP_ARTIFACTS_ROOT": str(tmp_path / "artifacts"),
        "STREAMLOOP_TELEMETRY_TRACES_DIR": str(tmp_path / "traces"),
        "STREAMLOOP_TELEMETRY_SAMPLE_RATIO": "0.01",
        "STREAMLOOP_INGEST_GROUP_ID": f"{prefix}ingest",
        "STREAMLOOP_SIMULATOR_GROUP_ID": f"{prefix}simulator",
        "STREAMLOOP_REGISTRY_API_PORT": str(free_port()),
        "STREAMLOOP_REGISTRY_HTTP_AUTH__OPERATOR_TOKEN": OPERATOR_TOKEN,
        "STREAMLOOP_TRAINING_BOOTSTRAP": "false",
        "STREAMLOOP_TRAINING_HYPERPARAMETERS__EPOCHS": "4",
        # A loose gate, so that the second model (same world, more data) is blessed and the
        # test can promote and roll back; the gate's strictness has tests of its own.
        "STREAMLOOP_EVALUATION_THRESHOLDS__MAX_ACCURACY_DROP": "0.15",
        "STREAMLOOP_EVALUATION_THRESHOLDS__MAX_RECALL_DROP": "0.3",
        **{f"STREAMLOOP_{s.upper()}_MODEL_NAME": model for s in SERVICES},
        "E2E_MODEL": model,
    }
    provision(KafkaSettings(topic_prefix=prefix))
    procs = {s: Proc(["-m", f"services.{s}"], env) for s in SERVICES}
    for name, proc in procs.items():
        ready = "Worker ready" if name == "labelling" else '"consumer started"'
        wait_for(
            lambda p=proc, r=ready: p.alive() and any(r in line for line in p.lines),
            120,
            what=f"{name} to be ready",
        )
    yield env
    for name, p in procs.items():
        p.kill()
        print(f"--- {name} (exit {p.p.returncode}) ---", *p.lines[-30:], sep="\n")
    registry = RedisRegistry(connect(RedisSettings()))
    for key in registry._redis.scan_iter(f"streamloop:registry:{model}:*"):
        registry._redis.delete(key)


def cli(env: dict[str, str], *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "streamloop", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **env},
    )
    print(f"$ streamloop {' '.join(args)}  -> {out.returncode}\n{out.stdout}{out.stderr}")
    return out


def simulate(env: dict[str, str], seconds: int, seed: int) -> None:
    """Run the steady-day scenario as fast as it goes."""
    out = cli(
        env,
        *("simulate", "--scenario", "steady-day", "--rate", "0", "--duration", str(seconds)),
        *("--seed", str(seed), "--run-id", f"s{seed}"),
    )
    assert out.returncode == 0


def test_retrain_list_show_promote_and_roll_back_from_the_command_line(
    stack: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    env, model = stack, stack["E2E_MODEL"]
    kafka = KafkaSettings()
    registry = RedisRegistry(connect(RedisSettings()))

    simulate(env, 120, 1)
    examples = wait_for(
        lambda: len(read_all(kafka, prefix + Topics.EXAMPLES, 10**6, timeout_s=2)) >= 600 or None,
        120,
        what="labelled examples",
    )
    assert examples

    first = cli(env, "retrain", "--model", model, "--reason", "first model", "--timeout", "300")
    assert first.returncode == 0
    assert "epoch 4/4" in first.stdout
    champion = registry.champion(model)
    assert champion is not None
    assert f"{champion.version} blessed" in first.stdout and "champion" in first.stdout
    assert champion.tags["reason"] == "first model"

    listed = cli(env, "models", "list", "--model", model)
    assert listed.returncode == 0
    assert champion.version in listed.stdout and "champion" in listed.stdout
    assert "blessed" in listed.stdout

    shown = cli(env, "models", "show", champion.version, "--model", model)
    assert shown.returncode == 0
    for text in (
        "lineage",
        "manifest",
        "fresh holdout",
        "reference holdout",
        "per slice",
        "condition=day",
        "CPU latency",
    ):
        assert text in shown.stdout, text

    # More of the same world: a new snapshot, a new version, blessed, shadowing as challenger.
    simulate(env, 80, 2)
    wait_for(
        lambda: len(read_all(kafka, prefix + Topics.EXAMPLES, 10**6, timeout_s=2)) >= 1000 or None,
        120,
        what="more labelled examples",
    )
    second = cli(env, "retrain", "--model", model, "--reason", "more data", "--timeout", "300")
    assert second.returncode == 0
    view = registry.view(model)
    challenger = view.challenger()
    assert challenger is not None and challenger.version != champion.version
    assert challenger.parent_version == champion.version
    assert view.champion() is not None and view.champion().version == champion.version  # type: ignore[union-attr]

    promoted = cli(env, "models", "promote", challenger.version, "--model", model)
    assert promoted.returncode == 0 and f"champion is now {challenger.version}" in promoted.stdout
    assert registry.aliases(model) == {"champion": challenger.version}

    rolled = cli(env, "models", "rollback", "--model", model, "--reason", "test")
    assert rolled.returncode == 0 and f"champion is now {champion.version}" in rolled.stdout
    assert registry.aliases(model) == {"champion": champion.version}
    back = registry.get_version(model, challenger.version)
    assert back is not None and back.rolled_back

    refused = cli(env, "models", "rollback", "--model", model)
    assert refused.returncode == 1 and "refused" in refused.stdout
    unknown = cli(env, "models", "promote", "ffffffffffff", "--model", model)
    assert unknown.returncode == 1 and "unknown version" in unknown.stdout

    # Weights trained elsewhere: the champion's tensors in a torch checkpoint of their own,
    # converted (weights only) and imported. They pass the gate on their merit and shadow.
    weights = ArtifactStore(Path(env["STREAMLOOP_ARTIFACTS_ROOT"])).load_weights(
        champion.artifact_uri, champion.sha256
    )
    torch.save({"epoch": 9, "state_dict": weights.tensors}, tmp_path / "elsewhere.pt")
    good_file = tmp_path / "elsewhere.safetensors"
    converted = cli(env, "models", "convert", str(tmp_path / "elsewhere.pt"), str(good_file))
    assert converted.returncode == 0
    good = cli(
        env,
        *("models", "import", str(good_file), "--architecture", "streamloop-cnn-v1"),
        *("--classes", CLASSES, "--note", "trained elsewhere", "--model", model),
        *("--timeout", "300"),
    )
    assert good.returncode == 0 and "blessed" in good.stdout
    found = re.search(r"stored as version ([0-9a-f]{12})", good.stdout)
    assert found
    imported = registry.get_version(model, found[1])
    assert imported is not None and imported.init == "imported"
    assert imported.imported is not None and imported.imported.note == "trained elsewhere"
    assert imported.imported.file_name == "elsewhere.safetensors"
    assert imported.aliases == ["challenger"] and imported.training_metrics["epochs_completed"] == 0
    history = registry.view(model).history
    evaluated = [
        i for i, h in enumerate(history) if h.version == found[1] and h.action == "evaluated"
    ]
    aliased = [
        i for i, h in enumerate(history) if h.version == found[1] and h.action == "alias_set"
    ]
    assert evaluated and aliased and evaluated[0] < aliased[0]  # no alias before the gate
    shown = cli(env, "models", "show", found[1], "--model", model)
    assert "init: imported" in shown.stdout and "elsewhere.safetensors" in shown.stdout

    # Random weights through the registry's API: registered, then refused by the gate.
    torch.manual_seed(7)
    spec = ModelSpec.for_architecture("streamloop-cnn-v1", CLASSES.split(","), 64, 64)
    request = urllib.request.Request(
        f"http://127.0.0.1:{env['STREAMLOOP_REGISTRY_API_PORT']}/models/import"
        f"?architecture=streamloop-cnn-v1&classes={CLASSES}&model={model}&file_name=random.st",
        data=st_save(build_model(spec).state_dict()),
        headers={
            "Authorization": f"Bearer {OPERATOR_TOKEN}",
            "Content-Type": "application/octet-stream",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        assert resp.status == 202
        answer = json.loads(resp.read())
    rejected = wait_for(
        lambda: (v := registry.get_version(model, answer["version"])) and v.evaluation and v,
        240,
        what="the gate's verdict on random weights",
    )
    assert rejected.status == "rejected" and rejected.aliases == []
    assert rejected.evaluation is not None and rejected.evaluation.reasons
    assert not rejected.was_champion and rejected.imported is not None
    print("random weights refused:", rejected.evaluation.reasons)
