"""The one model definition and the one preprocessing function.

Training, evaluation and serving all build the network with ``build_model`` and turn pixels
into its input with ``preprocess``, so what a model sees in serving is exactly what it saw in
training. ``ModelSpec`` is what the weights alone do not say (classes in output order, input
size); it travels as metadata inside the safetensors artifact.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from shared.artifacts import ArtifactStore, FormatError
from shared.images import pixels_from_b64

__all__ = [
    "ARCHITECTURE",
    "ModelCost",
    "ModelSpec",
    "build_model",
    "example_pixels",
    "load_model",
    "model_cost",
    "predict_proba",
    "preprocess",
    "to_network_input",
]

ARCHITECTURE = "streamloop-cnn-v1"
"""Name of the network ``build_model`` returns; bumped whenever the layers change."""

Pixels = npt.NDArray[np.uint8]


class ModelSpec(BaseModel):
    """What a set of weights is for: architecture, class order and input size."""

    model_config = ConfigDict(frozen=True)

    architecture: str = ARCHITECTURE
    classes: tuple[str, ...] = Field(min_length=2)
    image_height: int = Field(gt=0)
    image_width: int = Field(gt=0)
    channels: int = Field(default=3, gt=0)

    def to_metadata(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """safetensors metadata: one entry holding canonical JSON of the spec and ``extra``.
        One entry because safetensors writes several in no fixed order, and the artifact's
        bytes (hence its sha256 and version) must depend only on its content."""
        doc = {"spec": self.model_dump(mode="json"), **(extra or {})}
        return {"streamloop": json.dumps(doc, sort_keys=True, separators=(",", ":"))}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> ModelSpec:
        """Inverse of ``to_metadata``. Raises ValueError when the spec is missing."""
        raw = metadata.get("streamloop")
        if raw is None:
            raise ValueError("artifact metadata has no streamloop entry")
        doc = json.loads(raw)
        if not isinstance(doc, dict) or "spec" not in doc:
            raise ValueError("artifact metadata has no model spec")
        return cls.model_validate(doc["spec"])


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]


def build_model(spec: ModelSpec) -> nn.Module:
    """A fresh, untrained network for ``spec``: three conv/ReLU/max-pool blocks (16, 32, 64
    channels) and one linear layer. About 40 thousand parameters and 22 MFLOPs per 64x64
    image (``model_cost``), so a CPU serves hundreds of frames a second.

    Raises ValueError for an architecture this code does not know, or an input whose sides are
    not multiples of 8 (three 2x poolings)."""
    if spec.architecture != ARCHITECTURE:
        raise ValueError(
            f"unknown architecture {spec.architecture!r} (this build has {ARCHITECTURE})"
        )
    if spec.image_height % 8 or spec.image_width % 8:
        raise ValueError("image height and width must be multiples of 8")
    features = 64 * (spec.image_height // 8) * (spec.image_width // 8)
    return nn.Sequential(
        *_block(spec.channels, 16),
        *_block(16, 32),
        *_block(32, 64),
        nn.Flatten(),
        nn.Linear(features, len(spec.classes)),
    )


def preprocess(pixels: Pixels) -> torch.Tensor:
    """uint8 pixels, ``(N, H, W, C)`` or one ``(H, W, C)`` image, to the network's input:
    float32 ``(N, C, H, W)`` in [0, 1]."""
    if pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8, not {pixels.dtype}")
    if pixels.ndim == 3:
        pixels = pixels[None]
    if pixels.ndim != 4:
        raise ValueError(f"pixels must have 3 or 4 dimensions, not {pixels.ndim}")
    return to_network_input(torch.from_numpy(np.ascontiguousarray(pixels)))


def to_network_input(pixels: torch.Tensor) -> torch.Tensor:
    """The tensor half of ``preprocess``: uint8 ``(N, H, W, C)`` to float32 ``(N, C, H, W)`` in
    [0, 1]. Exported graphs (``shared.runtimes``) start with it, so they see what eager sees."""
    return pixels.permute(0, 3, 1, 2).float() / 255.0


def example_pixels(pixels_b64: str, width: int, height: int, channels: int) -> Pixels:
    """The ``(H, W, C)`` pixel array carried by an ``Example``."""
    return pixels_from_b64(pixels_b64, height, width, channels)


def predict_proba(
    model: nn.Module, pixels: Pixels, batch_size: int = 256
) -> npt.NDArray[np.float32]:
    """Class probabilities ``(N, K)`` for ``(N, H, W, C)`` pixels, in inference mode."""
    model.eval()
    out: list[npt.NDArray[np.float32]] = []
    with torch.inference_mode():
        for i in range(0, len(pixels), batch_size):
            logits = model(preprocess(pixels[i : i + batch_size]))
            out.append(torch.softmax(logits, dim=1).numpy().astype(np.float32))
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out)


def load_model(store: ArtifactStore, uri: str, sha256: str) -> tuple[nn.Module, ModelSpec]:
    """The network stored at ``uri``, verified against ``sha256``, in eval mode, with its spec.

    Raises the store's ArtifactError subclasses; FormatError when the weights do not fit the
    spec they carry."""
    loaded = store.load_weights(uri, sha256)
    try:
        spec = ModelSpec.from_metadata(loaded.metadata)
        model = build_model(spec)
        model.load_state_dict(loaded.tensors, strict=True)
    except (ValueError, RuntimeError) as exc:
        raise FormatError(f"artifact {uri} does not hold a usable model: {exc}") from exc
    model.eval()
    return model, spec


class ModelCost(BaseModel):
    """Size and arithmetic cost of one forward pass."""

    model_config = ConfigDict(frozen=True)

    parameters: int
    flops_per_image: int
    """Multiply-adds counted twice (one multiply, one add), convolutions and linear layers."""


def model_cost(spec: ModelSpec) -> ModelCost:
    """Parameters and FLOPs per image of ``build_model(spec)``, counted on a real forward pass."""
    model = build_model(spec)
    flops = 0

    def count(module: nn.Module, _inputs: Sequence[torch.Tensor], output: torch.Tensor) -> None:
        nonlocal flops
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            per_output = (module.in_channels // module.groups) * kh * kw
            flops += 2 * per_output * output.numel()
        elif isinstance(module, nn.Linear):
            flops += 2 * module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, spec.channels, spec.image_height, spec.image_width))
    finally:
        for h in hooks:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    return ModelCost(parameters=params, flops_per_image=flops)
