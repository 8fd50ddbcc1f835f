"""The commands and code that README.md and docs/*.md tell a user to run, run against the real
Kafka and Redis (``make test`` starts them; see infra/with-infra.sh).

The convention (also in docs/testing.md):

- A fenced block whose language is ``sh``, ``bash``, ``console`` or ``python`` is a snippet.
  Output, configuration and diagrams use other languages (``text``, ``json``, ``yaml``,
  ``mermaid``) and are not run.
- Every snippet is named by an HTML comment on the line just above its opening fence,
  ``<!-- snippet: NAME -->``; names are unique across the README and the docs. The name, not
  the file or the line, is the snippet's identity, so text can move between pages.
- Every snippet is either run here (``RUN``: name -> how) or listed in ``SKIP`` with the
  reason, most often the test that covers the same thing. A snippet in neither table, an entry
  of either table that names no snippet, and a snippet without a name all fail
  ``test_every_snippet_is_run_or_skipped_with_a_reason``: a new snippet cannot go untested.
  A skipped snippet must still parse (``bash -n``, ``compile``).
- Shell runs through bash (``-e -o pipefail``) in the repository root with ``.venv/bin`` first
  on PATH; ``console`` blocks run their ``$ `` lines; Python runs with ``.venv/bin/python``.
  Each run has a topic prefix of its own (``STREAMLOOP_KAFKA_TOPIC_PREFIX``), and the topic of
  a kcat ``-t TOPIC`` gets the same prefix, so snippets never touch unprefixed topics.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from shared.settings import KafkaSettings
from shared.topics import TOPICS, Topics
from tests.conftest import new_prefix, provision_prefixed
from tests.docs import doc_files
from tests.integration.helpers import Proc, free_port

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
RUNNABLE = {"sh", "bash", "console", "python"}
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")
_NAME = re.compile(r"^\s*<!--\s*snippet:\s*(?P<name>[\w.-]+)\s*-->\s*$")

# The frame id the documented kcat examples use; the tests put one of their own in its place.
DOC_FRAME_ID = "cam7-000001"


@dataclass(frozen=True)
class Snippet:
    name: str | None
    lang: str
    path: str
    line: int
    text: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def extract(path: Path) -> list[Snippet]:
    """Every fenced block of ``path`` whose language is runnable, with its name (or None)."""
    lines = path.read_text().splitlines()
    out: list[Snippet] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        start, indent, lang = i, m["indent"], m["lang"].lower()
        i += 1
        body: list[str] = []
        while i < len(lines) and not re.match(r"^[ \t]*```[ \t]*$", lines[i]):
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1  # the closing fence
        if lang not in RUNNABLE:
            continue
        above = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
        named = _NAME.match(above)
        out.append(
            Snippet(
                name=named["name"] if named else None,
                lang=lang,
                path=str(path.relative_to(ROOT)),
                line=start + 1,
                text="\n".join(body) + "\n",
            )
        )
    return out


SNIPPETS: list[Snippet] = [s for f in doc_files() for s in extract(f)]


# --- how snippets run ----------------------------------------------------------------------


def python_exe() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def snippet_env(prefix: str) -> dict[str, str]:
    bin_dir = str(ROOT / ".venv" / "bin")
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "STREAMLOOP_KAFKA_TOPIC_PREFIX": prefix,
        "COLUMNS": "200",
    }


def with_prefixed_kcat_topics(text: str, prefix: str) -> str:
    return re.sub(r"(\bkcat\b[^\n]*?\s-t\s+)([\w.-]+)", rf"\g<1>{prefix}\g<2>", text)


def console_commands(text: str) -> str:
    """The ``$ `` lines of a console block (with their ``\\`` continuations)."""
    out: list[str] = []
    going = False
    for line in text.splitlines():
        if line.startswith("$ "):
            out.append(line[2:])
            going = line.endswith("\\")
        elif going:
            out.append(line)
            going = line.endswith("\\")
    return "\n".join(out) + "\n"


def run_snippet(
    snippet: Snippet,
    prefix: str,
    *,
    text: str | None = None,
    cwd: Path = ROOT,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``snippet`` (or ``text`` in its place) as the convention above says; fail the test
    with its output when it exits non-zero."""
    body = text if text is not None else snippet.text
    if snippet.lang == "python":
        argv = [python_exe(), "-c", body]
    else:
        if snippet.lang == "console":
            body = console_commands(body)
        if "kcat" in body and shutil.which("kcat") is None:
            pytest.fail("kcat is not installed (make setup installs it: apt-get install kcat)")
        argv = ["bash", "-e", "-o", "pipefail", "-c", with_prefixed_kcat_topics(body, prefix)]
    out = subprocess.run(
        argv, cwd=cwd, env=snippet_env(prefix), capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, (
        f"{snippet.name} ({snippet.where}) exited {out.returncode}:\n"
        + (out.stdout + out.stderr)[-4000:]
    )
    return out


# --- what each snippet needs -----------------------------------------------------------------


@dataclass
class Context:
    request: pytest.FixtureRequest
    tmp_path: Path

    def prefix(self, *, provisioned: bool = True) -> str:
        name = new_prefix()
        if provisioned:
            provision_prefixed(KafkaSettings(), name, list(TOPICS))
        return name


def read_until(
    topics: str | list[str],
    pred: Callable[[bytes], bool],
    timeout_s: float,
    alive: Callable[[], bool] = lambda: True,
) -> tuple[str, bytes] | None:
    """Read ``topics`` from their beginning (no group) until a record value satisfies
    ``pred``; return that record's topic and value, or None at the deadline."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        *([topics] if isinstance(topics, str) else topics),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **KafkaSettings().client_kwargs(),
    )
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                for rec in batch:
                    if rec.value is not None and pred(rec.value):
                        return rec.topic, bytes(rec.value)
            if not alive():
                raise AssertionError(f"the process under test died while reading {topics}")
    finally:
        consumer.close()
    return None


def has_frame_id(frame_id: str, event_type: str | None = None) -> Callable[[bytes], bool]:
    def pred(value: bytes) -> bool:
        try:
            obj = json.loads(value)
        except ValueError:
            return False
        return (
            isinstance(obj, dict)
            and obj.get("frame_id") == frame_id
            and (event_type is None or obj.get("event_type") == event_type)
        )

    return pred


@pytest.fixture(scope="module")
def labelling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Proc]]:
    """The labelling service, as tests/integration/test_labelling.py starts it, on topics of
    its own; yields (prefix, process)."""
    prefix = new_prefix()
    provision_prefixed(
        KafkaSettings(),
        prefix,
        [Topics.FRAMES_VALID, Topics.LABELS, Topics.EXAMPLES, Topics.EVENTS_DLQ],
    )
    proc = Proc(
        ["-m", "services.labelling"],
        env={
            "STREAMLOOP_KAFKA_TOPIC_PREFIX": prefix,
            "STREAMLOOP_LABELLING_PROVISION_TOPICS": "false",
            "STREAMLOOP_LABELLING_METRICS_PORT": str(free_port()),
            "STREAMLOOP_LABELLING_VAR_DIR": str(tmp_path_factory.mktemp("labelling-var")),
            "STREAMLOOP_TELEMETRY_TRACES_DIR": str(tmp_path_factory.mktemp("labelling-traces")),
        },
    )
    yield prefix, proc
    proc.kill()
    if proc.p.returncode not in (0, -9):
        print("\n".join(proc.lines[-40:]))


def label_becomes_example(snippet: Snippet, ctx: Context) -> None:
    """A label published exactly as documented (no event_type) for a frame on frames.valid
    becomes an ``example`` on ``examples``."""
    from shared.bus import EventProducer
    from shared.events import FrameValid

    prefix, proc = ctx.request.getfixturevalue("labelling")
    assert DOC_FRAME_ID in snippet.text, f"{snippet.name} no longer labels {DOC_FRAME_ID}"
    assert "event_type" not in snippet.text
    frame_id = f"cam7-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    frame = FrameValid(
        frame_id=frame_id,
        camera_id="cam-7",
        captured_at=now,
        ingested_at=now,
        width=64,
        height=64,
        pixels=np.full((64, 64, 3), 90, dtype=np.uint8).tobytes(),
        content_sha256="0" * 64,
        condition="day",
    )
    with EventProducer(KafkaSettings(topic_prefix=prefix)) as producer:
        producer.publish(Topics.FRAMES_VALID, frame, key="cam-7")
        producer.flush()
    run_snippet(snippet, prefix, text=snippet.text.replace(DOC_FRAME_ID, frame_id))

    # The label either joins its frame (an example) or is dead-lettered: wait for the first.
    got = read_until(
        [prefix + Topics.EXAMPLES, prefix + Topics.EVENTS_DLQ],
        has_frame_id(frame_id),
        timeout_s=90,
        alive=proc.alive,
    )
    assert got is not None, f"no example for {frame_id} within 90 s after {snippet.name}"
    topic, value = got
    assert topic == prefix + Topics.EXAMPLES, (
        f"the label of {snippet.name} ({snippet.where}) went to events.dlq instead of "
        f"joining its frame: {value[:300]!r}"
    )
    example = json.loads(value)
    assert example["event_type"] == "example"
    assert example["label"] == "truck" and example["camera_id"] == "cam-7"


def frame_on_frames_raw(snippet: Snippet, ctx: Context) -> None:
    """The documented kcat line puts a frame.raw that StreamLoop decodes on frames.raw."""
    from PIL import Image

    from shared.events import FrameRaw, decode
    from shared.images import decode_image
    from shared.topics import event_for

    prefix = ctx.prefix()
    Image.fromarray(np.full((64, 64, 3), 120, dtype=np.uint8)).save(ctx.tmp_path / "crop.png")
    frame_id = f"cam7-{uuid.uuid4().hex[:8]}"
    assert DOC_FRAME_ID in snippet.text
    run_snippet(
        snippet, prefix, text=snippet.text.replace(DOC_FRAME_ID, frame_id), cwd=ctx.tmp_path
    )
    got = read_until(prefix + Topics.FRAMES_RAW, has_frame_id(frame_id), 30)
    assert got is not None, f"{frame_id} did not reach frames.raw"
    value = got[1]
    frame = decode(value, FrameRaw, default=event_for(Topics.FRAMES_RAW))
    assert frame.camera_id == "cam-7" and frame.content_type == "image/png"
    assert decode_image(base64.b64decode(frame.image_b64)).shape == (64, 64, 3)


def python_publishes_a_frame(snippet: Snippet, ctx: Context) -> None:
    """The SDK snippet publishes a frame (and its label) and prints the frame id."""
    prefix = ctx.prefix()
    out = run_snippet(snippet, prefix)
    frame_id = out.stdout.split()[-1]
    assert read_until(prefix + Topics.FRAMES_RAW, has_frame_id(frame_id, "frame.raw"), 30), (
        f"{frame_id} (printed by {snippet.name}) is not on frames.raw"
    )
    assert read_until(prefix + Topics.LABELS, has_frame_id(frame_id, "label"), 30), (
        f"no label for {frame_id} on labels"
    )


def partitions_raised(snippet: Snippet, ctx: Context) -> None:
    """Raising the default partition count raises every topic but models.lifecycle."""
    prefix = ctx.prefix()
    out = run_snippet(snippet, prefix)
    assert re.search(r"partitions \S*frames\.raw -> 6", out.stdout), out.stdout
    assert "models.lifecycle ->" not in out.stdout


def own_task_settings(snippet: Snippet, ctx: Context) -> None:
    """The task the page configures is the set ``streamloop shapes`` writes, at 48x48, and
    every model service gets the same model name."""
    from streamloop.shapes import CLASSES

    check = (
        f"{sys.executable} -c 'import json; from shared.settings import TaskSettings as T; "
        "t = T(); print(json.dumps([list(t.classes), t.image_width, t.image_height]))'\n"
        "env | grep _MODEL_NAME= | sort"
    )
    out = run_snippet(snippet, ctx.prefix(provisioned=False), text=f"{snippet.text}\n{check}")
    lines = out.stdout.splitlines()
    assert json.loads(lines[0]) == [list(CLASSES), 48, 48], lines[0]
    services = ("EVALUATION", "MONITORING", "REGISTRY", "SERVING", "TRAINING")
    assert lines[1:] == [f"STREAMLOOP_{s}_MODEL_NAME=shapes" for s in services]


def own_task_publish(snippet: Snippet, ctx: Context) -> None:
    """Generating the set and publishing it with its labels, under the task of
    ``own-task-env`` (a few images per class instead of a hundred)."""
    env = next(s for s in SNIPPETS if s.name == "own-task-env")
    assert "--per-class 100" in snippet.text
    prefix = ctx.prefix()
    text = snippet.text.replace("--per-class 100", "--per-class 2")
    out = run_snippet(snippet, prefix, text=f"{env.text}\n{text}", cwd=ctx.tmp_path)
    assert "published 20 frames from camera cam-shapes and 20 labels" in out.stdout, out.stdout
    assert "no file published" not in out.stdout
    labels = dict(
        line.split(",") for line in (ctx.tmp_path / "var/shapes/labels.csv").read_text().split()
    )
    counted = 0

    def labelled(value: bytes) -> bool:
        nonlocal counted
        obj = json.loads(value)
        counted += obj.get("label") in labels.values()
        return counted == 20

    assert read_until(prefix + Topics.LABELS, labelled, 30), f"{counted} of 20 labels arrived"


def ray_training_settings(snippet: Snippet, ctx: Context) -> None:
    """The settings the page gives for GPU workers are the training service's, as meant."""
    check = (
        f"{sys.executable} -c 'import json; from services.training.settings import "
        "TrainingSettings as T; t = T(); r = t.ray; print(json.dumps([t.backend, r.workers, "
        "r.cpus_per_worker, r.gpu, r.storage, r.fallback_local]))'"
    )
    out = run_snippet(snippet, ctx.prefix(provisioned=False), text=f"{snippet.text}\n{check}")
    assert json.loads(out.stdout.splitlines()[-1]) == [
        "ray",
        4,
        4.0,
        "auto",
        "s3://bucket/streamloop/ray-train",
        False,
    ], out.stdout


RUN: dict[str, Callable[[Snippet, Context], None]] = {
    "label-kcat": label_becomes_example,
    "label-kcat-events": label_becomes_example,
    "frame-kcat": frame_on_frames_raw,
    "readme-sdk": python_publishes_a_frame,
    "sdk-publish": python_publishes_a_frame,
    "partitions-6": partitions_raised,
    "own-task-env": own_task_settings,
    "own-task-publish": own_task_publish,
    "train-on-ray-gpu": ray_training_settings,
}

SKIP: dict[str, str] = {
    "first-screen": "make demo and make test take minutes: the demo is "
    "tests/e2e/test_closed_loop.py, make test is this suite",
    "demo-mobilenet": "the demo takes minutes: "
    "tests/e2e/test_closed_loop.py runs it with mobilenet_v3_small (slow tier)",
    "try-data-path": "starts services in the background and simulates for 4 minutes: "
    "tests/e2e/test_data_in.py",
    "try-model-lifecycle": "starts every model service and trains: "
    "tests/e2e/test_model_lifecycle.py",
    "kafka-sasl-env": "points at a SASL_SSL cluster elsewhere: "
    "tests/integration/test_security_kafka.py",
    "rollback-curl": "needs a registry with an operator token: tests/integration/test_http_auth.py",
    "predict-curl": "needs Ray Serve with a champion: tests/integration/test_serving.py",
    "predictions-kafka-python": "reads forever: tests/integration/test_prediction_subscriber.py "
    "runs the same code (README_SNIPPET, checked identical below)",
    "predictions-sdk": "reads forever: tests/integration/test_prediction_subscriber.py",
    "own-task-services": "starts every service in the background: tests/e2e/test_own_task.py "
    "starts the same services under the same task settings",
    "own-task-watch": "needs the services and a bootstrapped champion: "
    "tests/e2e/test_own_task.py checks the champion and its predictions",
    "own-task-new-images": "needs a champion to predict: tests/e2e/test_own_task.py publishes "
    "unseen shapes with --map and tails their predictions",
    "import-convert": "needs a checkpoint: tests/e2e/test_model_lifecycle.py converts one "
    "with the same command and imports it",
    "import-cli": "needs the model services: tests/e2e/test_model_lifecycle.py imports a "
    "converted file with the same command and follows it to the gate's verdict",
    "import-curl": "needs a registry with an operator token: tests/e2e/test_model_lifecycle.py "
    "posts a file to the same route with the same query and headers",
    "init-imported": "needs an imported version: tests/unit/test_imports.py fine-tunes from "
    "one with the same setting",
    "labelstudio-local": "starts Label Studio and the bridge: tests/integration/"
    "test_labelstudio.py starts both the same way (infra/labelstudio/labelstudio.sh, "
    "python -m services.annotation with the token setting)",
    "labelstudio-compose": "no Docker engine here: make compose-check validates the profile",
    "own-task-retrain": "trains a second model: the retrain and the gate are "
    "tests/e2e/test_model_lifecycle.py (the same code for any task)",
}


# --- the tests ---------------------------------------------------------------------------------


def test_every_snippet_is_run_or_skipped_with_a_reason() -> None:
    problems = [
        f"{s.where}: a {s.lang} block without <!-- snippet: NAME -->"
        for s in SNIPPETS
        if s.name is None
    ]
    names = [s.name for s in SNIPPETS if s.name is not None]
    problems += [
        f"snippet name {n!r} is used more than once"
        for n in sorted(set(names))
        if names.count(n) > 1
    ]
    for s in SNIPPETS:
        if s.name is not None and s.name not in RUN and s.name not in SKIP:
            problems.append(f"{s.where}: snippet {s.name!r} is neither run (RUN) nor in SKIP")
    problems += [f"RUN names {n!r}, which no snippet has" for n in RUN if n not in names]
    problems += [f"SKIP names {n!r}, which no snippet has" for n in SKIP if n not in names]
    problems += [f"{n!r} is both in RUN and in SKIP" for n in RUN if n in SKIP]
    problems += [f"SKIP gives {n!r} no reason" for n, why in SKIP.items() if not why.strip()]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("snippet", SNIPPETS, ids=lambda s: s.name or s.where)
def test_snippet(snippet: Snippet, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if snippet.name is None or snippet.name in SKIP:
        if snippet.lang == "python":
            compile(snippet.text, snippet.where, "exec")
        else:
            body = console_commands(snippet.text) if snippet.lang == "console" else snippet.text
            check = subprocess.run(["bash", "-n", "-c", body], capture_output=True, text=True)
            assert check.returncode == 0, f"{snippet.where}: {check.stderr}"
        pytest.skip(SKIP.get(snippet.name or "", "unnamed: see the convention test"))
    RUN[snippet.name](snippet, Context(request=request, tmp_path=tmp_path))


def test_the_kafka_python_snippet_is_the_one_the_integration_test_runs() -> None:
    from tests.integration.test_prediction_subscriber import README_SNIPPET

    doc = next(s for s in SNIPPETS if s.name == "predictions-kafka-python")
    assert doc.text.strip() == README_SNIPPET.strip(), (
        f"{doc.where} and tests/integration/test_prediction_subscriber.py's README_SNIPPET differ"
    )
