"""The artifact store: content addressing, verification before load, confinement, no pickles."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.artifacts import (
    ArtifactNotFoundError,
    ArtifactStore,
    FormatError,
    IntegrityError,
    UnsafeReferenceError,
    sha256_bytes,
)
from shared.model import ModelSpec, build_model, load_model, model_cost, predict_proba, preprocess

SPEC = ModelSpec(classes=("car", "truck", "bus", "motorcycle"), image_height=64, image_width=64)


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


def test_weights_round_trip_and_are_content_addressed(store: ArtifactStore) -> None:
    torch.manual_seed(0)
    model = build_model(SPEC)
    ref = store.put_weights(model.state_dict(), SPEC.to_metadata())
    assert ref.uri == f"models/{ref.sha256[:2]}/{ref.sha256}.safetensors"
    assert sha256_bytes((store.root / ref.uri).read_bytes()) == ref.sha256
    again = store.put_weights(model.state_dict(), SPEC.to_metadata())
    assert again == ref

    loaded, spec = load_model(store, ref.uri, ref.sha256)
    assert spec == SPEC
    pixels = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(predict_proba(loaded, pixels), predict_proba(model, pixels))


def test_changed_bytes_are_refused_at_load(store: ArtifactStore) -> None:
    ref = store.put_weights(build_model(SPEC).state_dict(), SPEC.to_metadata())
    path = store.root / ref.uri
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="corrupt or was replaced"):
        load_model(store, ref.uri, ref.sha256)


@pytest.mark.parametrize(
    "uri",
    ["../outside.safetensors", "models/../../etc/passwd", "/etc/passwd", "models\\x", "", "~/x"],
)
def test_references_that_leave_the_store_are_refused(store: ArtifactStore, uri: str) -> None:
    with pytest.raises(UnsafeReferenceError):
        store.read_verified(uri, "0" * 64)


def test_a_symlink_out_of_the_store_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"x")
    (store.root / "models").mkdir(parents=True)
    os.symlink(secret, store.root / "models" / "link.safetensors")
    with pytest.raises(UnsafeReferenceError, match="outside"):
        store.read_verified("models/link.safetensors", sha256_bytes(b"x"))


def test_missing_artifact_is_a_clear_error(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactNotFoundError):
        store.read_verified("models/aa/none.safetensors", "a" * 64)


class _Payload:
    """Unpickling this object would create the sentinel file."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.sentinel}",))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_a_pickle_that_carries_code_is_never_executed(
    store: ArtifactStore, tmp_path: Path, writer: str
) -> None:
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    if writer == "pickle":
        path.write_bytes(pickle.dumps(_Payload(sentinel)))
    else:
        torch.save({"weight": _Payload(sentinel)}, path)
    data = path.read_bytes()
    # Stored with a correct hash, so only the format check stands between it and a load.
    ref = store.put_bytes(data, "models", ".safetensors")
    with pytest.raises(FormatError, match="not a safetensors file"):
        load_model(store, ref.uri, ref.sha256)
    assert not sentinel.exists()


def test_weights_that_do_not_fit_their_spec_are_refused(store: ArtifactStore) -> None:
    other = ModelSpec(classes=("a", "b"), image_height=64, image_width=64)
    ref = store.put_weights(build_model(other).state_dict(), SPEC.to_metadata())
    with pytest.raises(FormatError, match="usable model"):
        load_model(store, ref.uri, ref.sha256)


def test_preprocess_is_nchw_in_unit_range() -> None:
    pixels = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    pixels[0, 0, 0] = (255, 0, 51)
    x = preprocess(pixels)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    assert x[0, :, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.2])
    assert preprocess(pixels[0]).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="uint8"):
        preprocess(pixels.astype(np.float32))


def test_model_cost_counts_parameters_and_flops() -> None:
    cost = model_cost(SPEC)
    assert cost.parameters == sum(p.numel() for p in build_model(SPEC).parameters())
    # conv 3->16 at 64x64, 16->32 at 32x32, 32->64 at 16x16, linear 4096->4 (multiply + add).
    expected = 2 * (64 * 64 * 16 * 27 + 32 * 32 * 32 * 144 + 16 * 16 * 64 * 288 + 4096 * 4)
    assert cost.flops_per_image == expected
