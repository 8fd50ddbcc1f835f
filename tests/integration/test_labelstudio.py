"""The Label Studio bridge against a real Label Studio (started here from its own environment,
``make labelstudio-env``), the real broker and Redis, and the labelling service: a label
request becomes one task with the frame and the champion's class, a person's annotation comes
back as a label and then an example, an update replaces it, a deleted one is counted, the
poll brings what the webhook did not, and the API token is in no line the bridge writes."""

from __future__ import annotations

import http.cookiejar
import io
import json
import os
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import SecretStr

from services.annotation.client import LabelStudioClient
from services.annotation.studio import CHOICES, IMAGE, project_title
from services.simulator.render import render_frame
from shared.bus import DlqHeaders, EventProducer
from shared.events import FrameValid, LabelRequest, Prediction
from shared.registry import DEFAULT_MODEL_NAME
from shared.settings import KafkaSettings
from shared.topics import Topics
from tests.conftest import new_prefix, provision_prefixed
from tests.integration.browser import CHROMIUM, Browser
from tests.integration.helpers import ROOT, Proc, free_port, metric, read_all, wait_for

pytestmark = pytest.mark.timeout(600)

STUDIO_ENV = ROOT / "var" / "envs" / "labelstudio"
SCRIPT = ROOT / "infra" / "labelstudio" / "labelstudio.sh"
READ_TOKEN = "read-" + uuid.uuid4().hex


@dataclass
class Studio:
    url: str
    token: str
    username: str
    password: str
    client: LabelStudioClient


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Studio]:
    if not (STUDIO_ENV / "bin" / "label-studio").exists():
        pytest.fail("Label Studio is not installed: run make labelstudio-env")
    port = free_port()
    env = {
        **os.environ,
        "STREAMLOOP_VAR": str(tmp_path_factory.mktemp("labelstudio")),
        "STREAMLOOP_LABELSTUDIO_PORT": str(port),
        "STREAMLOOP_LABELSTUDIO_TOKEN": "ls-" + uuid.uuid4().hex,
        "STREAMLOOP_LABELSTUDIO_USERNAME": "ana@example.org",
        "STREAMLOOP_LABELSTUDIO_PASSWORD": "pw-" + uuid.uuid4().hex[:12],
    }
    subprocess.run([str(SCRIPT), "start"], env=env, check=True, timeout=400)
    url = f"http://127.0.0.1:{port}"
    token = env["STREAMLOOP_LABELSTUDIO_TOKEN"]
    try:
        yield Studio(
            url,
            token,
            env["STREAMLOOP_LABELSTUDIO_USERNAME"],
            env["STREAMLOOP_LABELSTUDIO_PASSWORD"],
            LabelStudioClient(url, SecretStr(token)),
        )
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, check=False, timeout=60)


@dataclass
class Stack:
    prefix: str
    bridge: Proc
    labelling: Proc
    metrics_port: int
    bridge_url: str
    project: int
    producer: EventProducer
    traces: Path


@pytest.fixture(scope="module")
def stack(studio: Studio, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prefix = new_prefix()
    kafka = KafkaSettings()
    provision_prefixed(
        kafka,
        prefix,
        [
            Topics.FRAMES_VALID,
            Topics.PREDICTIONS,
            Topics.LABELS,
            Topics.LABELS_REQUESTS,
            Topics.EXAMPLES,
            Topics.EVENTS_DLQ,
        ],
    )
    metrics_port, port = free_port(), free_port()
    traces = tmp_path_factory.mktemp("traces")
    common = {
        "STREAMLOOP_KAFKA_TOPIC_PREFIX": prefix,
        "STREAMLOOP_TELEMETRY_TRACES_DIR": str(traces),
        "STREAMLOOP_TELEMETRY_LOG_LEVEL": "DEBUG",
    }
    labelling = Proc(
        ["-m", "services.labelling"],
        env={**common, "STREAMLOOP_LABELLING_PROVISION_TOPICS": "false"},
    )
    bridge = Proc(
        ["-m", "services.annotation"],
        env={
            **common,
            "STREAMLOOP_ANNOTATION_PROVISION_TOPICS": "false",
            "STREAMLOOP_ANNOTATION_GROUP_ID": prefix + "annotation",
            "STREAMLOOP_ANNOTATION_STUDIO_URL": studio.url,
            "STREAMLOOP_ANNOTATION_STUDIO_TOKEN": studio.token,
            "STREAMLOOP_ANNOTATION_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "STREAMLOOP_ANNOTATION_PORT": str(port),
            "STREAMLOOP_ANNOTATION_METRICS_PORT": str(metrics_port),
            "STREAMLOOP_ANNOTATION_POLL_INTERVAL_S": "15",  # the webhook comes first
            "STREAMLOOP_ANNOTATION_HTTP_AUTH__READ_TOKEN": READ_TOKEN,
        },
    )
    producer = EventProducer(KafkaSettings(topic_prefix=prefix))
    try:
        wait_for(
            lambda: bridge.alive() and any("annotation bridge ready" in ln for ln in bridge.lines),
            300,
            what="bridge ready",
        )
        wait_for(
            lambda: labelling.alive() and any("Worker ready" in ln for ln in labelling.lines),
            120,
            what="labelling ready",
        )
        project = next(
            int(p["id"])
            for p in studio.client.projects()
            if p["title"] == project_title(DEFAULT_MODEL_NAME)
        )
        yield Stack(
            prefix,
            bridge,
            labelling,
            metrics_port,
            f"http://127.0.0.1:{port}",
            project,
            producer,
            traces,
        )
    finally:
        producer.close()
        for proc in (bridge, labelling):
            proc.kill()


def pixels(seed: int) -> np.ndarray:
    return render_frame("bus", "night", np.random.default_rng(seed))


def send_frame(stack: Stack, fid: str, seed: int, champion: str) -> None:
    now = datetime.now(UTC)
    stack.producer.publish(
        Topics.FRAMES_VALID,
        FrameValid(
            frame_id=fid,
            camera_id="cam-1",
            captured_at=now,
            ingested_at=now,
            width=64,
            height=64,
            pixels=pixels(seed).tobytes(),
            content_sha256="0" * 64,
            condition="night",
        ),
        key="cam-1",
    )
    stack.producer.publish(
        Topics.PREDICTIONS,
        Prediction(
            frame_id=fid,
            camera_id="cam-1",
            captured_at=now,
            model_name=DEFAULT_MODEL_NAME,
            model_version="v7",
            predicted_class=champion,
            probabilities={champion: 0.55},
            confidence=0.55,
            served_at=now,
            latency_from_capture_ms=5.0,
            latency_from_ingest_ms=4.0,
        ),
        key="cam-1",
    )


def ask(stack: Stack, fid: str, reason: str) -> None:
    request = LabelRequest(frame_id=fid, camera_id="cam-1", reason=reason, confidence=0.55)
    stack.producer.publish(Topics.LABELS_REQUESTS, request, key="cam-1")
    stack.producer.flush()


def tasks_of(studio: Studio, project: int) -> list[dict[str, Any]]:
    answer = studio.client.request(
        "GET", "/api/tasks/", query={"project": project, "fields": "all", "page_size": 100}
    )
    return list(answer["tasks"])


def choice(cls: str) -> list[dict[str, Any]]:
    return [
        {"from_name": CHOICES, "to_name": IMAGE, "type": "choices", "value": {"choices": [cls]}}
    ]


def labels_of(stack: Stack, expect: int, timeout_s: float = 60) -> list[dict[str, Any]]:
    records = read_all(KafkaSettings(), stack.prefix + Topics.LABELS, expect, timeout_s=timeout_s)
    return [json.loads(r.value) for r in records]


RUN = uuid.uuid4().hex[:6]
F1, F2, F3, F4 = (f"{RUN}-f{i}" for i in (1, 2, 3, 4))
ARTEFACTS = ROOT / "var" / "test-artifacts"


def test_a_request_becomes_one_task_with_the_frame_and_the_champions_class(
    studio: Studio, stack: Stack
) -> None:
    send_frame(stack, F1, 1, "car")
    send_frame(stack, F2, 2, "bus")
    ask(stack, F1, "least confident")
    ask(stack, F1, "disagreement: v7 says car, v8 says bus")  # the same frame again
    ask(stack, F2, "drift: camera cam-1")
    wait_for(lambda: len(tasks_of(studio, stack.project)) >= 2, 90, what="two tasks")
    tasks = tasks_of(studio, stack.project)
    assert sorted(t["data"]["frame_id"] for t in tasks) == [F1, F2]
    first = next(t for t in tasks if t["data"]["frame_id"] == F1)
    assert first["data"]["reason"] == "least confident"
    (prediction,) = first["predictions"]
    assert prediction["result"][0]["value"]["choices"] == ["car"]
    assert prediction["model_version"] == "v7"

    url = first["data"]["image"]
    assert url.startswith(stack.bridge_url + "/frames/") and "sig=" in url
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        shown = np.asarray(Image.open(io.BytesIO(resp.read())).convert("RGB"))
    assert np.array_equal(shown, pixels(1))  # the frame as ingested
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url.split("?")[0], timeout=10)
    assert refused.value.code == 403
    created = metric(stack.metrics_port, 'streamloop_annotation_tasks_total{outcome="created"}')
    exists = metric(stack.metrics_port, 'streamloop_annotation_tasks_total{outcome="exists"}')
    assert (created, exists) == (2, 1)


def test_an_annotation_reaches_labels_and_examples_and_an_update_replaces_it(
    studio: Studio, stack: Stack
) -> None:
    task = next(t for t in tasks_of(studio, stack.project) if t["data"]["frame_id"] == F1)
    made = studio.client.annotate(int(task["id"]), choice("bus"))  # as a person's submit
    (label,) = labels_of(stack, 1)
    assert (label["frame_id"], label["label"]) == (F1, "bus")
    assert label["annotator"] == f"labelstudio:{studio.username}"
    by_webhook = (
        'streamloop_annotation_answers_total{outcome="published",reason="",source="webhook"}'
    )
    # The webhook brought it, not the poll (the counter follows the publish by a moment).
    wait_for(lambda: metric(stack.metrics_port, by_webhook) == 1, 30, what="the webhook counted")
    by_poll = 'streamloop_annotation_answers_total{outcome="published",reason="",source="poll"}'
    assert metric(stack.metrics_port, by_poll) == 0

    studio.client.update_annotation(int(made["id"]), choice("truck"))
    labels = labels_of(stack, 2)
    assert [lab["label"] for lab in labels] == ["bus", "truck"]
    assert labels[0]["event_id"] != labels[1]["event_id"]

    def latest_example() -> str | None:
        records = read_all(KafkaSettings(), stack.prefix + Topics.EXAMPLES, 2, timeout_s=5)
        mine = [json.loads(r.value) for r in records if r.key == F1.encode()]
        return mine[-1]["label"] if mine and mine[-1]["label"] == "truck" else None

    wait_for(latest_example, 90, interval_s=1, what="the corrected example")

    studio.client.request("DELETE", f"/api/annotations/{made['id']}/")
    deleted = 'streamloop_annotation_answers_total{outcome="deleted",reason="",source="webhook"}'
    wait_for(lambda: metric(stack.metrics_port, deleted) == 1, 30, what="the deletion counted")
    assert len(labels_of(stack, 3, timeout_s=5)) == 2  # nothing published for it


def test_the_poll_brings_an_annotation_the_webhook_did_not(studio: Studio, stack: Stack) -> None:
    for hook in studio.client.request("GET", "/api/webhooks/", query={"project": stack.project}):
        studio.client.request("DELETE", f"/api/webhooks/{hook['id']}/")
    task = next(t for t in tasks_of(studio, stack.project) if t["data"]["frame_id"] == F2)
    before = len(labels_of(stack, 1_000, timeout_s=3))
    studio.client.annotate(int(task["id"]), choice("car"))
    labels = labels_of(stack, before + 1)
    assert len(labels) == before + 1
    assert (labels[-1]["frame_id"], labels[-1]["label"]) == (F2, "car")
    by_poll = 'streamloop_annotation_answers_total{outcome="published",reason="",source="poll"}'
    wait_for(lambda: metric(stack.metrics_port, by_poll) >= 1, 30, what="the poll counted")


def test_a_request_for_a_frame_never_seen_is_dead_lettered(stack: Stack) -> None:
    ask(stack, F3, "least confident")
    (dead,) = read_all(KafkaSettings(), stack.prefix + Topics.EVENTS_DLQ, 1, timeout_s=60)
    headers = {k: v.decode() for k, v in dead.headers}
    assert headers[DlqHeaders.ERROR] == "frame_unknown"
    assert F3 in headers[DlqHeaders.ERROR_MESSAGE]


def test_the_api_token_is_in_no_line_the_bridge_wrote(studio: Studio, stack: Stack) -> None:
    assert sum("task made" in ln for ln in stack.bridge.lines) >= 2  # it logged all along
    leaked = [ln for ln in stack.bridge.lines if studio.token in ln or READ_TOKEN in ln]
    assert leaked == []
    spans = (stack.traces / "annotation.jsonl").read_text()
    assert "labels.requests process" in spans  # its spans were written
    assert studio.token not in spans and READ_TOKEN not in spans


def logged_in(studio: Studio) -> dict[str, str]:
    """The cookies of a session of Label Studio's user, logged in through its own form."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    form = opener.open(studio.url + "/user/login/", timeout=30).read().decode()
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
    assert found is not None, "no CSRF token on the login page"
    body = urllib.parse.urlencode(
        {
            "csrfmiddlewaretoken": found.group(1),
            "email": studio.username,
            "password": studio.password,
        }
    ).encode()
    request = urllib.request.Request(
        studio.url + "/user/login/", data=body, headers={"Referer": studio.url + "/user/login/"}
    )
    opener.open(request, timeout=30).read()
    cookies = {c.name: c.value for c in jar if c.value is not None}
    assert "sessionid" in cookies, "the login was refused"
    return cookies


@pytest.mark.skipif(CHROMIUM is None, reason="make setup installs Debian's chromium")
def test_a_person_sees_the_task_with_the_frame_and_the_pre_selected_class(
    studio: Studio, stack: Stack, tmp_path: Path
) -> None:
    send_frame(stack, F4, 4, "bus")
    ask(stack, F4, "least confident")
    wait_for(
        lambda: any(t["data"]["frame_id"] == F4 for t in tasks_of(studio, stack.project)),
        60,
        what="the task",
    )
    task = next(t for t in tasks_of(studio, stack.project) if t["data"]["frame_id"] == F4)
    browser = Browser(tmp_path, height=1400)
    try:
        browser.call("Network.enable")
        for name, value in logged_in(studio).items():
            browser.call("Network.setCookie", name=name, value=value, url=studio.url)
        browser.call(
            "Page.navigate", url=f"{studio.url}/projects/{stack.project}/data?task={task['id']}"
        )
        # The list's thumbnail comes from the bridge's URL; the labelling panel draws the
        # same image, fetched into a blob, at the panel's width.
        browser.wait_for(
            "(() => { const frame = i => i.complete && i.naturalWidth === 64;"
            " const imgs = [...document.images].filter(frame);"
            " return imgs.some(i => i.src.includes('/frames/'))"
            " && imgs.some(i => i.getBoundingClientRect().width > 200); })()",
            90,
            what="the frame drawn on the task's page",
        )
        checked = browser.wait_for(
            "(() => { const c = [...document.querySelectorAll('input:checked')]"
            ".map(i => (i.closest('label') || i.parentElement).innerText.trim())"
            ".filter(t => t); return c.length ? c : null; })()",
            30,
            what="a class selected",
        )
        reason = browser.evaluate("document.body.innerText.includes('least confident')")
        png = browser.screenshot(ARTEFACTS / "labelstudio-task.png")
    finally:
        browser.close()
    # The champion's class, pre-selected (its label reads "bus[3]": its hotkey follows it).
    assert [re.sub(r"\[\d+\]$", "", c) for c in checked] == ["bus"]
    assert reason
    shot = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    assert shot.shape == (1400, 1400) and shot.std() > 10  # a drawn page, not a blank one
