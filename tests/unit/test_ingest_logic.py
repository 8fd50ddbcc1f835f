"""Ingest's validation and duplicate rules, with the in-memory claims store."""

from __future__ import annotations

import base64
import io
from datetime import UTC, datetime

import numpy as np
import pytest
from PIL import Image

from services.ingest.logic import (
    DEFAULT_MAX_IMAGE_BYTES,
    Ingestor,
    Policy,
    Refused,
    record_limit,
    validate,
)
from shared.events import FrameRaw
from shared.fitting import FIT_POLICIES, FitPolicy
from shared.images import encode_image
from shared.ports import MemoryClaims, Message
from shared.topics import FRAME_RECORD_MAX_BYTES

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def pixels(seed: int = 0, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def frame(
    data: bytes | None = None,
    *,
    frame_id: str = "f1",
    camera_id: str = "cam-1",
    content_type: str = "image/png",
    b64: str | None = None,
) -> FrameRaw:
    data = encode_image(pixels()) if data is None else data
    return FrameRaw(
        frame_id=frame_id,
        camera_id=camera_id,
        captured_at=NOW,
        content_type=content_type,  # type: ignore[arg-type]
        image_b64=b64 if b64 is not None else base64.b64encode(data).decode(),
    )


def msg(event: FrameRaw, offset: int = 0, partition: int = 0) -> Message[FrameRaw]:
    return Message(event, "frames.raw", partition, offset, event.camera_id, [], 0)


def reason_of(f: FrameRaw, policy: Policy | None = None) -> str:
    with pytest.raises(Refused) as info:
        validate(f, policy or Policy())
    return info.value.reason


def test_a_png_frame_is_normalised_to_raw_rgb_pixels_that_round_trip() -> None:
    px = pixels(3)
    out = validate(frame(encode_image(px)), Policy(), NOW)
    assert (out.width, out.height, out.channels) == (64, 64, 3)
    assert np.array_equal(np.frombuffer(out.pixels, np.uint8).reshape(64, 64, 3), px)
    assert out.ingested_at == NOW and out.frame_id == "f1" and len(out.content_sha256) == 64


def test_jpeg_and_grey_or_alpha_images_become_three_channels() -> None:
    jpeg = encode_image(pixels(), "image/jpeg")
    assert validate(frame(jpeg, content_type="image/jpeg"), Policy()).channels == 3
    buf = io.BytesIO()
    Image.new("LA", (64, 64), (120, 200)).save(buf, format="PNG")
    out = validate(frame(buf.getvalue()), Policy())
    assert list(out.pixels[:3]) == [120, 120, 120]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: frame(b64="not base64 at all!"), "bad_base64"),
        (lambda: frame(b"GIF89a" + bytes(100)), "not_image"),
        (lambda: frame(encode_image(pixels())[:200]), "truncated_image"),
        (lambda: frame(encode_image(pixels()), content_type="image/jpeg"), "content_type_mismatch"),
        (lambda: frame(camera_id="../etc/passwd"), "bad_camera_id"),
        (lambda: frame(camera_id="cam 1"), "bad_camera_id"),
    ],
)
def test_each_kind_of_bad_frame_is_refused_with_its_reason(make, reason) -> None:  # type: ignore[no-untyped-def]
    assert reason_of(make()) == reason


def test_an_image_over_the_byte_limit_is_refused_before_decoding() -> None:
    big = encode_image(pixels(), "image/png")
    assert reason_of(frame(big), Policy(max_image_bytes=len(big) - 1)) == "too_large"
    assert validate(frame(big), Policy(max_image_bytes=len(big)))


def test_the_allowlist_limits_cameras() -> None:
    assert reason_of(frame(camera_id="cam-9"), Policy(allowed_cameras=frozenset({"cam-1"}))) == (
        "unknown_camera"
    )


def test_by_default_a_frame_of_another_size_is_letterboxed_and_keeps_its_size() -> None:
    assert Policy().fit == "letterbox" and Policy().max_image_bytes == 8_000_000
    out = validate(frame(encode_image(np.full((32, 64, 3), 50, np.uint8))), Policy())
    assert (out.width, out.height, out.source_width, out.source_height) == (64, 64, 64, 32)
    px = np.frombuffer(out.pixels, np.uint8).reshape(64, 64, 3)
    assert not px[:16].any() and not px[48:].any() and (px[16:48] == 50).all()


@pytest.mark.parametrize("fit", ["letterbox", "center-crop", "stretch"])
@pytest.mark.parametrize(
    ("size", "content_type"),
    [((80, 60), "image/png"), ((37, 91), "image/png"), ((400, 300), "image/jpeg")],
)
def test_each_fit_policy_brings_any_size_to_the_models(
    fit: FitPolicy, size: tuple[int, int], content_type: str
) -> None:
    data = encode_image(pixels(size=size), content_type)
    out = validate(frame(data, content_type=content_type), Policy(fit=fit))
    assert (out.width, out.height, out.channels) == (64, 64, 3)
    assert (out.source_width, out.source_height) == size
    assert len(out.pixels) == 64 * 64 * 3


def test_refuse_keeps_the_old_contract_and_the_right_size_passes_untouched() -> None:
    odd = frame(encode_image(pixels(size=(32, 48))))
    assert reason_of(odd, Policy(fit="refuse")) == "wrong_size"
    px = pixels(4)
    for fit in FIT_POLICIES:
        out = validate(frame(encode_image(px)), Policy(fit=fit))
        assert out.pixels == px.tobytes() and (out.source_width, out.source_height) == (64, 64)


def test_a_frame_with_too_many_pixels_is_refused_from_its_header() -> None:
    small = encode_image(pixels(size=(80, 60)))
    assert reason_of(frame(small), Policy(max_pixels=80 * 60 - 1)) == "too_many_pixels"
    assert validate(frame(small), Policy(max_pixels=80 * 60)).source_width == 80


def test_a_frames_raw_record_holds_the_largest_image_allowed() -> None:
    assert record_limit(9_000_000) <= FRAME_RECORD_MAX_BYTES
    b64 = base64.b64encode(bytes(DEFAULT_MAX_IMAGE_BYTES)).decode()
    envelope = frame().model_copy(update={"image_b64": b64}).model_dump_json()
    assert len(envelope) <= record_limit(DEFAULT_MAX_IMAGE_BYTES)


def test_duplicates_are_dropped_redeliveries_pass_and_conflicts_are_refused() -> None:
    claims = MemoryClaims()
    ing = Ingestor(Policy(), claims, clock=lambda: NOW)
    a = frame(encode_image(pixels(1)), frame_id="a")
    b = frame(encode_image(pixels(2)), frame_id="b")
    first = ing.process([msg(a, 0), msg(b, 1)])
    assert [fv.frame_id for _, fv in first.valid] == ["a", "b"]
    # The same records again (a crash before the commit): published again, not dropped.
    again = ing.process([msg(a, 0)])
    assert len(again.valid) == 1 and again.redelivered == 1
    # The same frame published twice: the second copy is a duplicate.
    dup = ing.process([msg(a, 7)])
    assert dup.valid == [] and len(dup.duplicates) == 1
    # Another image under a used frame_id is not silently dropped.
    clash = ing.process([msg(frame(encode_image(pixels(9)), frame_id="b"), 8)])
    assert [r.reason for r in clash.rejections] == ["duplicate_frame_id"]


def test_a_duplicate_inside_one_batch_is_caught_and_bad_frames_do_not_block_good_ones() -> None:
    ing = Ingestor(Policy(), MemoryClaims(), clock=lambda: NOW)
    a = frame(frame_id="a")
    out = ing.process([msg(a, 0), msg(frame(b64="%%", frame_id="x"), 1), msg(a, 2)])
    assert [fv.frame_id for _, fv in out.valid] == ["a"]
    assert [r.reason for r in out.rejections] == ["bad_base64"]
    assert len(out.duplicates) == 1


def test_without_the_claims_store_frames_pass_and_the_outcome_says_so() -> None:
    claims = MemoryClaims()
    claims.available = False
    out = Ingestor(Policy(), claims).process([msg(frame(), 0), msg(frame(), 1)])
    assert out.dedupe_skipped and len(out.valid) == 2
