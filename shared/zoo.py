"""The architectures a model may have: the built-in CNN and a few torchvision classifiers.

``STREAMLOOP_MODEL_ARCHITECTURE`` names one of them when training creates a model; the name
then travels in the artifact's ``ModelSpec``, and ``shared.model.build_model`` builds the
network from the spec alone. This module holds what is known about each name without
building anything: the input sizes it accepts, whether ImageNet's per-channel mean and
standard deviation are part of its input, and, for torchvision models, the builder.

It imports neither torch nor torchvision when loaded (settings validate names through it);
a builder imports torchvision when it runs. Builders are always called with
``weights=None``: a network is initialised from torch's generator, never downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "BUILTIN_CNN",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "KNOWN_ARCHITECTURES",
    "TORCHVISION",
    "InputNormalization",
    "ZooArchitecture",
    "check_architecture",
    "check_input_size",
    "default_normalization",
]

BUILTIN_CNN = "streamloop-cnn-v1"
"""The built-in CNN (``shared.model``): the default, and what a spec without a name means."""

InputNormalization = Literal["imagenet"]
"""A per-channel ``(x - mean) / std`` applied to the ``[0, 1]`` input inside the network."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_CNN_DOWNSAMPLING = 8
"""The built-in CNN pools three times by 2, so its sides must be multiples of 8."""


@dataclass(frozen=True)
class ZooArchitecture:
    """A torchvision classifier, trained from scratch with its head sized to the classes."""

    name: str
    build: Callable[[int], nn.Module]
    """Builds an untrained network with ``num_classes`` outputs (imports torchvision)."""
    min_side: int = 32
    """Smallest input side: five stride-2 stages leave a 1x1 map at 32 pixels."""
    normalization: InputNormalization | None = "imagenet"
    """Input normalisation new models of this architecture get (torchvision's convention,
    which lets weights trained elsewhere on ImageNet statistics be imported unchanged)."""


def _torchvision(name: str) -> Callable[[int], nn.Module]:
    """The builder of torchvision's classifier ``name``: untrained, ``num_classes`` outputs."""

    def build(num_classes: int) -> nn.Module:
        import torchvision.models

        network: nn.Module = torchvision.models.get_model(
            name, weights=None, progress=False, num_classes=num_classes
        )
        return network

    return build


TORCHVISION: dict[str, ZooArchitecture] = {
    a.name: a
    for a in (
        ZooArchitecture("resnet18", _torchvision("resnet18")),
        ZooArchitecture("resnet34", _torchvision("resnet34")),
        ZooArchitecture("resnet50", _torchvision("resnet50")),
        ZooArchitecture("mobilenet_v3_small", _torchvision("mobilenet_v3_small")),
        ZooArchitecture("mobilenet_v3_large", _torchvision("mobilenet_v3_large")),
        ZooArchitecture("efficientnet_b0", _torchvision("efficientnet_b0")),
    )
}
"""The torchvision classifiers, by the name of their torchvision builder."""

KNOWN_ARCHITECTURES: tuple[str, ...] = (BUILTIN_CNN, *TORCHVISION)


def check_architecture(name: str) -> str:
    """``name`` when it is a known architecture; ValueError listing the known ones if not."""
    if name not in KNOWN_ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(KNOWN_ARCHITECTURES)}")
    return name


def check_input_size(name: str, image_height: int, image_width: int) -> None:
    """Raise ValueError when architecture ``name`` cannot take inputs of this size (or is
    unknown): the built-in CNN needs sides that are multiples of 8, a torchvision model sides
    of at least its ``min_side``."""
    check_architecture(name)
    if name == BUILTIN_CNN:
        if image_height % _CNN_DOWNSAMPLING or image_width % _CNN_DOWNSAMPLING:
            raise ValueError(
                f"{name}: image height and width must be multiples of {_CNN_DOWNSAMPLING}"
            )
        return
    least = TORCHVISION[name].min_side
    if image_height < least or image_width < least:
        raise ValueError(
            f"{name}: image height and width must be at least {least} pixels, "
            f"not {image_height}x{image_width}"
        )


def default_normalization(name: str) -> InputNormalization | None:
    """The input normalisation a new model of architecture ``name`` gets."""
    check_architecture(name)
    return None if name == BUILTIN_CNN else TORCHVISION[name].normalization
