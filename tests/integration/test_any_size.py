"""Camera images of any size, published with kcat exactly as docs/events.md shows, get
predictions through the real ingest and serving processes; a real 20000 x 20000 PNG is
dead-lettered as ``too_many_pixels`` without ingest ever holding its pixels."""

from __future__ import annotations

import base64
import subprocess
import uuid
from pathlib import Path

import pytest

from shared.bus import DlqHeaders
from shared.events import Prediction, decode
from shared.images import encode_image
from shared.settings import KafkaSettings
from shared.topics import Topics
from tests.bombs import png_of_black
from tests.conftest import provision_prefixed
from tests.integration.helpers import Proc, read_all, wait_for
from tests.integration.test_serving import TOPICS, World
from tests.synthetic import camera_scene

pytestmark = pytest.mark.timeout(400)

RSS_LIMIT_MB = 300


def kcat_publish(path: Path, frame_id: str, content_type: str, topic: str) -> None:
    """The documented kcat line (docs/events.md, frame-kcat), with kcat's own record limit
    raised as the text under it says."""
    script = (
        f"img=$(base64 -w0 {path.name})\n"
        'printf \'{"frame_id":"%s","camera_id":"cam-7","captured_at":"%s",'
        f'"content_type":"{content_type}","image_b64":"%s"}}\\n\' \\\n'
        f'  "{frame_id}" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$img" \\\n'
        f"  | kcat -P -b 127.0.0.1:9092 -t {topic} -k cam-7 -X message.max.bytes=13000000\n"
    )
    subprocess.run(["bash", "-c", script], cwd=path.parent, check=True, timeout=60)


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def test_frames_of_any_size_are_predicted_and_a_pixel_bomb_is_refused_from_its_header(
    kafka_settings: KafkaSettings, prefix: str, tmp_path: Path
) -> None:
    provision_prefixed(kafka_settings, prefix, [*TOPICS, Topics.FRAMES_RAW, Topics.FRAMES_DLQ])
    world = World(prefix, tmp_path)
    v1 = world.train(1)
    world.register(v1)
    serving = world.serving()
    ingest = Proc(
        ["-m", "services.ingest"],
        env={
            "STREAMLOOP_KAFKA_TOPIC_PREFIX": prefix,
            "STREAMLOOP_INGEST_PROVISION_TOPICS": "false",
            "STREAMLOOP_INGEST_METRICS_PORT": "0",
            "STREAMLOOP_INGEST_GROUP_ID": f"{prefix}ingest",
            "STREAMLOOP_TELEMETRY_TRACES_DIR": str(tmp_path / "traces"),
        },
    )
    try:
        wait_for(lambda: any('"consumer started"' in ln for ln in ingest.lines), 120, what="ingest")
        run = uuid.uuid4().hex[:6]
        shots = {
            f"{run}-1080p": (1920, 1080, "image/jpeg"),
            f"{run}-tall": (37, 91, "image/png"),
            f"{run}-12mp": (4000, 3000, "image/jpeg"),
        }
        for i, (frame_id, (w, h, ctype)) in enumerate(shots.items()):
            path = tmp_path / f"{frame_id}.{ctype.split('/')[1]}"
            path.write_bytes(encode_image(camera_scene(w, h, seed=i), ctype))
            kcat_publish(path, frame_id, ctype, prefix + Topics.FRAMES_RAW)
        bomb = tmp_path / "bomb.png"
        bomb.write_bytes(png_of_black(20_000, 20_000))
        kcat_publish(bomb, f"{run}-bomb", "image/png", prefix + Topics.FRAMES_RAW)

        preds = {
            p.frame_id: p
            for p in (
                decode(r.value, Prediction)
                for r in world.predictions(3, timeout_s=120, alive=serving.alive)
            )
        }
        assert set(preds) == set(shots)
        for frame_id, (w, h, _) in shots.items():
            p = preds[frame_id]
            assert (p.source_width, p.source_height) == (w, h), frame_id
            assert p.model_version == v1.model_version

        dead = read_all(kafka_settings, prefix + Topics.FRAMES_DLQ, 1, timeout_s=60)
        assert len(dead) == 1
        headers = {k: v.decode() for k, v in dead[0].headers}
        assert headers[DlqHeaders.ERROR] == "too_many_pixels", headers
        assert "20000" in headers[DlqHeaders.ERROR_MESSAGE], headers
        assert base64.b64encode(bomb.read_bytes()).decode() in dead[0].value.decode()
        # 1.2 GB of pixels were never decoded: ingest's peak memory stayed small.
        peak = peak_rss_mb(ingest.p.pid)
        print(f"ingest peak resident memory: {peak:.0f} MB")
        assert peak < RSS_LIMIT_MB, f"ingest peaked at {peak:.0f} MB"
    finally:
        ingest.kill()
        serving.kill()
        world.producer.close()
