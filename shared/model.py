"""The one model definition and the one preprocessing function.

Training, evaluation and serving all build the network with ``build_model`` and turn pixels
into its input with ``preprocess``, so what a model sees in serving is exactly what it saw in
training. ``ModelSpec`` is what the weights alone do not say (architecture, classes in output
order, input size, input normalisation); it travels as metadata inside the safetensors
artifact, so evaluation and serving build the network an artifact was trained as, whatever
architecture training is configured with today.
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
from shared.zoo import (
    BUILTIN_CNN,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TORCHVISION,
    InputNormalization,
    check_architecture,
    check_input_size,
    default_normalization,
)

__all__ = [
    "ARCHITECTURE",
    "ModelCost",
    "ModelSpec",
    "NormalizedInput",
    "build_model",
    "example_pixels",
    "load_model",
    "model_cost",
    "predict_proba",
    "preprocess",
    "to_network_input",
]

ARCHITECTURE = BUILTIN_CNN
"""Name of the built-in CNN, the default architecture; bumped whenever its layers change."""

_OPTIONAL_SPEC_FIELDS = frozenset({"input_normalization"})
"""Spec fields written to an artifact only when set: a spec that leaves them unset serialises
as it did before they existed, so a built-in CNN keeps its bytes, sha256 and version."""

Pixels = npt.NDArray[np.uint8]


class ModelSpec(BaseModel):
    """What a set of weights is for: architecture, class order, input size and input
    normalisation. A spec without an architecture is the built-in CNN."""

    model_config = ConfigDict(frozen=True)

    architecture: str = ARCHITECTURE
    """``streamloop-cnn-v1`` or a torchvision classifier (``shared.zoo``)."""
    classes: tuple[str, ...] = Field(min_length=2)
    image_height: int = Field(gt=0)
    image_width: int = Field(gt=0)
    channels: int = Field(default=3, gt=0)
    input_normalization: InputNormalization | None = None
    """``imagenet``: the network subtracts ImageNet's per-channel mean from its ``[0, 1]``
    input and divides by the standard deviation, as its first step (so exported graphs do
    too). None: the input as ``to_network_input`` makes it."""

    @classmethod
    def for_architecture(
        cls, architecture: str, classes: Sequence[str], image_height: int, image_width: int
    ) -> ModelSpec:
        """The spec of a new model of ``architecture``, with the input normalisation that
        architecture takes (``shared.zoo``). For the built-in CNN it is the spec of old.
        Raises ValueError for an unknown architecture."""
        return cls(
            architecture=check_architecture(architecture),
            classes=tuple(classes),
            image_height=image_height,
            image_width=image_width,
            input_normalization=default_normalization(architecture),
        )

    def to_metadata(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """safetensors metadata: one entry holding canonical JSON of the spec and ``extra``.
        One entry because safetensors writes several in no fixed order, and the artifact's
        bytes (hence its sha256 and version) must depend only on its content. Optional fields
        that are unset are left out, so older specs keep their exact bytes."""
        spec = {
            k: v
            for k, v in self.model_dump(mode="json").items()
            if not (k in _OPTIONAL_SPEC_FIELDS and v is None)
        }
        doc = {"spec": spec, **(extra or {})}
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


class NormalizedInput(nn.Module):
    """``network`` behind a fixed per-channel ``(x - mean) / std``. The statistics are
    constants of the spec, not weights: they are not in the state dict."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, network: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.network((x - self.mean) / self.std)
        return out


def build_model(spec: ModelSpec) -> nn.Module:
    """A fresh, untrained network for ``spec``, initialised from torch's generator (seed it
    for the same weights).

    The built-in CNN (``streamloop-cnn-v1``): three conv/ReLU/max-pool blocks (16, 32, 64
    channels) and one linear layer. About 40 thousand parameters and 22 MFLOPs per 64x64
    image (``model_cost``), so a CPU serves hundreds of frames a second. A torchvision
    classifier (``shared.zoo``): torchvision's network with ``weights=None`` and a head of
    ``len(spec.classes)`` outputs; nothing is downloaded.

    Raises ValueError for an architecture this code does not know, an input size it cannot
    take (``shared.zoo.check_input_size``), or a channel count it cannot take."""
    check_input_size(spec.architecture, spec.image_height, spec.image_width)
    if spec.architecture == ARCHITECTURE:
        network = _builtin_cnn(spec)
    elif spec.channels != 3:
        raise ValueError(f"{spec.architecture} takes 3-channel images, not {spec.channels}")
    else:
        network = TORCHVISION[spec.architecture].build(len(spec.classes))
    if spec.input_normalization == "imagenet":
        if spec.channels != len(IMAGENET_MEAN):
            raise ValueError(f"imagenet normalisation needs 3 channels, not {spec.channels}")
        return NormalizedInput(network, IMAGENET_MEAN, IMAGENET_STD)
    return network


def _builtin_cnn(spec: ModelSpec) -> nn.Module:
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
    model = build_model(spec).eval()
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
