"""Data in, end to end: the simulator, ingest and labelling as separate processes on the real
broker and Redis; the CLI's publish, label and tail as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from shared.images import encode_image
from shared.settings import KafkaSettings
from shared.telemetry import read_spans
from shared.topics import Topics, provision
from streamloop.trace_view import select_trace
from tests.bombs import png_declaring
from tests.integration.helpers import Proc, read_all, wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(400)


@pytest.fixture
def stack(prefix: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Ingest and labelling running on topics of this test's own."""
    env = {
        "STREAMLOOP_KAFKA_TOPIC_PREFIX": prefix,
        "STREAMLOOP_TELEMETRY_TRACES_DIR": str(tmp_path / "traces"),
        "STREAMLOOP_TELEMETRY_SAMPLE_RATIO": "0.05",
        "STREAMLOOP_TELEMETRY_FRAMES_SAMPLE_RATIO": "0.05",
        "STREAMLOOP_INGEST_GROUP_ID": f"{prefix}ingest",
        "STREAMLOOP_SIMULATOR_GROUP_ID": f"{prefix}simulator",
    }
    provision(KafkaSettings(topic_prefix=prefix))
    procs = [Proc(["-m", "services.ingest"], env), Proc(["-m", "services.labelling"], env)]
    for proc, ready in zip(procs, ('"consumer started"', "Worker ready"), strict=True):
        wait_for(
            lambda p=proc, r=ready: p.alive() and any(r in line for line in p.lines),
            120,
            what=f"{proc.p.args[-1]} to be ready",
        )
    yield env
    for p in procs:
        p.kill()
        # Shown by pytest only when the test failed.
        print(f"--- {p.p.args[-1]} (exit {p.p.returncode}) ---", *p.lines[-40:], sep="\n")


def cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamloop", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "160", **env},
    )


def test_a_day_to_night_run_yields_examples_that_match_what_the_simulator_sent(
    stack: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    summary_path = tmp_path / "summary.json"
    run_id = f"e2e{uuid.uuid4().hex[:6]}"
    # 200 scenario seconds at the scenario's 20 frames/s, published as fast as possible:
    # 3600 day frames, then night falls for the last 400.
    out = cli(
        stack,
        *("simulate", "--scenario", "day-to-night", "--rate", "0", "--duration", "200"),
        *("--run-id", run_id, "--summary", str(summary_path)),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    sent = json.loads(summary_path.read_text())
    assert sent["frames"] == 4000
    assert sent["frames_by_condition"] == {"day": 3600, "night": 400}
    assert 0.25 < sent["labels"] / sent["frames"] < 0.35, "labels follow the coverage (0.3)"
    assert "condition night" in out.stdout

    kafka = KafkaSettings()
    examples = read_all(kafka, prefix + Topics.EXAMPLES, sent["labels"], timeout_s=240)
    assert examples, "no examples at all: see the services' logs below"
    got = [json.loads(r.value) for r in examples]
    assert all(e["frame_id"].startswith(run_id) for e in got)
    assert len({e["frame_id"] for e in got}) == len(got) == sent["labels"]
    assert dict(Counter(e["condition"] for e in got)) == sent["labels_by_condition"]
    by_class = Counter(e["label"] for e in got)
    for cls, n in sent["labels_by_class"].items():
        # Examples carry what the annotators said; a noisy label moves one count.
        assert abs(by_class[cls] - n) <= sent["wrong_labels"], (cls, by_class, sent)
    assert {e["camera_id"] for e in got} == {"cam-1", "cam-2", "cam-3", "cam-4"}
    valid = read_all(kafka, prefix + Topics.FRAMES_VALID, sent["frames"] + 1, timeout_s=5)
    assert len(valid) == sent["frames"], "every simulated frame passed ingest once"

    # A sampled frame's trace runs from the camera's publish into ingest's publish.
    spans = read_spans(tmp_path / "traces")
    camera = [s for s in spans if s["attributes"].get("streamloop.frame_id", "").startswith(run_id)]
    assert camera, "the simulator traced some frames (frames sample ratio 0.05)"
    services = {
        s["service"] for s in select_trace(spans, camera[0]["attributes"]["streamloop.frame_id"])
    }
    assert {"simulator", "ingest"} <= services, services


def test_publish_label_and_tail_dlq_from_the_command_line(
    stack: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(5)
    for i in range(4):
        px = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        (images / f"crop{i}.png").write_bytes(encode_image(px))
    (images / "crop9.jpg").write_bytes(encode_image(px, "image/jpeg"))
    (images / "bomb.png").write_bytes(png_declaring(20_000, 20_000))
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\ncrop0.png,car\ncrop1.png,bus\n")
    mapping = tmp_path / "map.csv"

    out = cli(
        stack,
        "publish",
        str(images),
        "--camera",
        "cam-cli",
        "--labels",
        str(labels),
        "--map",
        str(mapping),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "published 6 frames from camera cam-cli and 2 labels" in out.stdout
    # A user publishing a labelled set learns when a first model trains, and how to start it.
    assert "STREAMLOOP_TRAINING_BOOTSTRAP_MIN_EXAMPLES" in out.stdout
    assert "streamloop retrain" in out.stdout
    rows = [line.split(",") for line in mapping.read_text().splitlines()[1:]]
    ids = {Path(r[0]).name: r[1] for r in rows}

    out = cli(stack, "label", ids["crop2.png"], "truck")
    assert out.returncode == 0 and "labelled" in out.stdout, out.stdout + out.stderr
    out = cli(stack, "label", ids["crop3.png"], "zeppelin")
    assert out.returncode == 2 and "not a class" in out.stdout

    kafka = KafkaSettings()
    examples = read_all(kafka, prefix + Topics.EXAMPLES, 3, timeout_s=120)
    assert {json.loads(r.value)["frame_id"]: json.loads(r.value)["label"] for r in examples} == {
        ids["crop0.png"]: "car",
        ids["crop1.png"]: "bus",
        ids["crop2.png"]: "truck",
    }
    # The 20000x20000 pixel bomb is refused by ingest; tail shows it with its reason.
    out = cli(stack, "tail", "dlq", "--json", "--max", "1", "--idle-exit", "60")
    assert out.returncode == 0, out.stdout + out.stderr
    letter = json.loads(out.stdout.strip().splitlines()[-1])
    assert letter["reason"] == "too_many_pixels" and "20000x20000" in letter["message"]
    assert json.loads(letter["payload"])["frame_id"] == ids["bomb.png"]
    out = cli(stack, "tail", "dlq", "--max", "1", "--idle-exit", "30")
    assert out.returncode == 0 and "too_many_pixels" in out.stdout, out.stdout + out.stderr


def test_the_simulator_labels_every_frame_asked_for_on_labels_requests(
    prefix: str, tmp_path: Path
) -> None:
    scenario = tmp_path / "unlabelled.toml"
    scenario.write_text(
        'name = "unlabelled"\nseed = 4\nrate = 10.0\ncameras = 2\n'
        "[labels]\ncoverage = 0.0\ndelay_s = 0.5\n"
        '[[schedule]]\nat_s = 0\ncondition = "fog"\n'
    )
    kafka = KafkaSettings(topic_prefix=prefix)
    provision(kafka)
    sim = Proc(
        ["-m", "services.simulator"],
        {
            "STREAMLOOP_KAFKA_TOPIC_PREFIX": prefix,
            "STREAMLOOP_SIMULATOR_SCENARIO": str(scenario),
            "STREAMLOOP_SIMULATOR_GROUP_ID": f"{prefix}simulator",
            "STREAMLOOP_SIMULATOR_DURATION_S": "0",
            "STREAMLOOP_TELEMETRY_EXPORTER": "none",
        },
    )
    try:
        frames = read_all(KafkaSettings(), prefix + Topics.FRAMES_RAW, 20, 60, alive=sim.alive)
        wanted = [json.loads(r.value)["frame_id"] for r in frames[-3:]]
        from shared.bus import EventProducer
        from shared.events import LabelRequest

        producer = EventProducer(kafka)

        # Ask until the simulator has joined the group and answers.
        def asked_and_labelled() -> list[dict[str, str]] | None:
            for fid in wanted:
                producer.publish(
                    Topics.LABELS_REQUESTS,
                    LabelRequest(frame_id=fid, camera_id="cam-1", reason="test"),
                    key=fid,
                )
            producer.flush()
            got = [
                json.loads(r.value) for r in read_all(KafkaSettings(), prefix + Topics.LABELS, 3, 3)
            ]
            return got if len(got) >= 3 else None

        labels = wait_for(asked_and_labelled, 90, interval_s=1, what="requested labels")
        assert sorted(lab["frame_id"] for lab in labels) == sorted(wanted)
        assert all(lab["annotator"] == "simulator" for lab in labels)
        producer.close()
    finally:
        sim.kill()
