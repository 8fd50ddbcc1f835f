"""Inference runtimes: one port, three ways to run the shared model on CPU.

- ``eager``: the network in torch (``shared.model.predict_proba``), built from the safetensors
  weights. The reference every other runtime is held to.
- ``onnx``: an ONNX graph run by ONNX Runtime's CPU execution provider.
- ``compiled``: an AOTInductor package (``.pt2``): the graph compiled to native code ahead of
  time (``torch.export`` then ``torch._inductor.aoti_compile_and_package``).

Every runtime takes uint8 ``(N, H, W, C)`` pixels and returns float32 ``(N, K)``
probabilities. An exported graph holds preprocessing, network and softmax together
(``InferenceGraph``), so its input is exactly eager's.

Exporting (``export_model``) is training's job and may take tens of seconds (a C++ compiler
for ``compiled``); serving only loads (``load_runtime``) bytes that the artifact store has
already checked against the sha256 named by ``models.trained``, and never compiles. Loading a
compiled package runs the native code inside it, which is why those bytes must be verified
first; it also only runs on CPUs with the instruction set of the machine that compiled it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from shared.model import ModelSpec, predict_proba, to_network_input

__all__ = [
    "EXPORT_FORMATS",
    "EXPORT_KIND",
    "EXPORT_SUFFIX",
    "MAX_BATCH",
    "TOLERANCE",
    "Agreement",
    "CompiledRuntime",
    "EagerRuntime",
    "ExportError",
    "ExportFormat",
    "InferenceGraph",
    "InferenceRuntime",
    "OnnxRuntime",
    "RuntimeName",
    "compare",
    "export_model",
    "load_runtime",
    "probe_pixels",
]

log = logging.getLogger("streamloop.runtimes")

RuntimeName = Literal["eager", "onnx", "compiled"]
ExportFormat = Literal["onnx", "compiled"]
"""Runtimes that need an artifact of their own (eager needs only the weights)."""

EXPORT_FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)
EXPORT_KIND = "exports"
"""Artifact-store kind (top-level directory) of exported graphs."""
EXPORT_SUFFIX: dict[ExportFormat, str] = {"onnx": ".onnx", "compiled": ".pt2"}

TOLERANCE = 1e-3
"""Largest difference to eager's probabilities an export may show on any image and class.
Float32 kernels differ between CPUs (vector width, fused multiply-add, reduction order):
a deep network such as efficientnet_b0 differs from eager by 2e-4 on an AMD EPYC where it
differed by less than 1e-4 elsewhere. A tenth of a percentage point of probability leaves
every class and every calibrated chance the same for monitoring's purposes."""

MAX_BATCH = 256
"""Largest batch an exported graph takes in one call; runtimes split longer inputs."""

Pixels = npt.NDArray[np.uint8]
Probabilities = npt.NDArray[np.float32]


class ExportError(RuntimeError):
    """The model could not be exported to (or loaded from) a format."""


class InferenceRuntime(Protocol):
    """What serving calls: probabilities for a batch of pixels."""

    name: RuntimeName

    def predict_proba(self, pixels: Pixels) -> Probabilities:
        """float32 ``(N, K)`` probabilities of uint8 ``(N, H, W, C)`` pixels."""
        ...


class InferenceGraph(nn.Module):
    """Pixels in, probabilities out: what ``predict_proba`` computes, as one traceable module."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.network(to_network_input(pixels)), dim=1)


def _batches(pixels: Pixels) -> list[Pixels]:
    if pixels.dtype != np.uint8 or pixels.ndim != 4:
        raise ValueError(f"pixels must be uint8 (N, H, W, C), not {pixels.dtype} {pixels.shape}")
    return [
        np.ascontiguousarray(pixels[i : i + MAX_BATCH]) for i in range(0, len(pixels), MAX_BATCH)
    ]


def _empty() -> Probabilities:
    return np.zeros((0, 0), dtype=np.float32)


class EagerRuntime:
    """The network in torch, in inference mode."""

    name: RuntimeName = "eager"

    def __init__(self, network: nn.Module) -> None:
        self.network = network.eval()

    def predict_proba(self, pixels: Pixels) -> Probabilities:
        return predict_proba(self.network, pixels, batch_size=MAX_BATCH)


class OnnxRuntime:
    """An ONNX graph on ONNX Runtime's CPU provider, ``threads`` threads inside an operator."""

    name: RuntimeName = "onnx"

    def __init__(self, data: bytes, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle workers would otherwise spin, taking CPU from the ingress and the broker that
        # share the machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Batches come in every size up to MAX_BATCH; a memory pattern is planned and kept per
        # input shape, which costs memory (about 90 MiB over random sizes) and no speed.
        options.enable_mem_pattern = False
        try:
            self._session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except _ort_errors() as exc:
            raise ExportError(f"ONNX Runtime refuses the graph: {exc}") from exc
        self._input = self._session.get_inputs()[0].name

    def predict_proba(self, pixels: Pixels) -> Probabilities:
        out = []
        for b in _batches(pixels):
            try:
                probs = self._session.run(None, {self._input: b})[0]
            except _ort_errors() as exc:
                raise ExportError(f"ONNX Runtime failed on a batch of {len(b)}: {exc}") from exc
            out.append(np.asarray(probs, dtype=np.float32))
        return np.concatenate(out) if out else _empty()


def _ort_errors() -> tuple[type[Exception], ...]:
    # ONNX Runtime's errors derive from Exception directly, not from RuntimeError.
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = (
        "EPFail",
        "EngineError",
        "Fail",
        "InvalidArgument",
        "InvalidGraph",
        "InvalidProtobuf",
        "ModelLoaded",
        "NoModel",
        "NoSuchFile",
        "NotImplemented",
        "RuntimeException",
    )
    return tuple(getattr(state, n) for n in names if hasattr(state, n))


class CompiledRuntime:
    """An AOTInductor package; its kernels use torch's intra-op threads."""

    name: RuntimeName = "compiled"

    def __init__(self, data: bytes) -> None:
        from torch._inductor import aoti_load_package

        # The loader wants a path; the bytes were verified by the caller, so a private copy
        # is what gets loaded (a file someone can still replace is never opened).
        with tempfile.TemporaryDirectory(prefix="streamloop-aoti-") as tmp:
            path = Path(tmp) / "model.pt2"
            path.write_bytes(data)
            self._model: Any = aoti_load_package(str(path))

    def predict_proba(self, pixels: Pixels) -> Probabilities:
        out = []
        with torch.inference_mode():
            for b in _batches(pixels):
                probs = self._model(torch.from_numpy(b))
                out.append(probs.numpy().astype(np.float32, copy=False))
        return np.concatenate(out) if out else _empty()


def probe_pixels(spec: ModelSpec, n: int = 8, seed: int = 0) -> Pixels:
    """``n`` random images of ``spec``'s size: a deterministic probe for agreement checks."""
    rng = np.random.default_rng(seed)
    shape = (n, spec.image_height, spec.image_width, spec.channels)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def export_model(network: nn.Module, spec: ModelSpec, fmt: ExportFormat) -> bytes:
    """The bytes of ``network`` (pixels to probabilities) in ``fmt``, for batches of 1 to
    ``MAX_BATCH`` images. ``compiled`` runs a C++ compiler (tens of seconds).

    Raises ExportError when torch cannot export or compile the graph."""
    graph = InferenceGraph(network).eval()
    example = torch.from_numpy(probe_pixels(spec, n=2))
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    started = time.perf_counter()
    try:
        if fmt == "onnx":
            data = _onnx_bytes(graph, example, batch)
        elif fmt == "compiled":
            data = _compiled_bytes(graph, example, batch)
        else:
            raise ValueError(f"unknown export format {fmt!r}")
    except (RuntimeError, ValueError, OSError, ImportError) as exc:
        raise ExportError(f"{fmt} export failed: {exc}") from exc
    log.info(
        "model exported",
        extra={
            "format": fmt,
            "bytes": len(data),
            "seconds": round(time.perf_counter() - started, 2),
        },
    )
    return data


def _onnx_bytes(graph: nn.Module, example: torch.Tensor, batch: Any) -> bytes:
    # The exporter warns, on every export, about torchvision operators this model never uses.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    program = torch.onnx.export(
        graph,
        (example,),
        dynamo=True,
        input_names=["pixels"],
        output_names=["probabilities"],
        dynamic_shapes=({0: batch},),
        external_data=False,
        optimize=True,
        verbose=False,
    )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    data: bytes = program.model_proto.SerializeToString()
    return data


def _compiled_bytes(graph: nn.Module, example: torch.Tensor, batch: Any) -> bytes:
    from torch._inductor import aoti_compile_and_package

    program = torch.export.export(graph, (example,), dynamic_shapes=({0: batch},))
    with tempfile.TemporaryDirectory(prefix="streamloop-aoti-") as tmp:
        path = Path(tmp) / "model.pt2"
        aoti_compile_and_package(program, package_path=str(path))
        return path.read_bytes()


def load_runtime(fmt: ExportFormat, data: bytes, threads: int) -> InferenceRuntime:
    """A runtime from verified export bytes. ``threads``: ONNX Runtime's intra-op threads
    (the compiled runtime uses torch's, which the process sets).

    Raises ExportError when the bytes are not a loadable graph of that format."""
    try:
        if fmt == "onnx":
            return OnnxRuntime(data, threads)
        if fmt == "compiled":
            return CompiledRuntime(data)
    except (RuntimeError, ValueError, OSError, ImportError) as exc:
        raise ExportError(f"{fmt} export does not load: {exc}") from exc
    raise ValueError(f"unknown export format {fmt!r}")


@dataclass(frozen=True)
class Agreement:
    """How a runtime's probabilities compare with eager's on the same images."""

    images: int
    same_class: bool
    """The same most probable class for every image."""
    max_abs_diff: float
    """Largest absolute difference over every image and class (inf for a shape mismatch)."""

    @property
    def agrees(self) -> bool:
        return self.images > 0 and self.same_class and self.max_abs_diff <= TOLERANCE


def compare(reference: Probabilities, candidate: Probabilities) -> Agreement:
    """``candidate``'s probabilities against ``reference``'s (eager's), image by image."""
    if reference.shape != candidate.shape:
        return Agreement(len(reference), same_class=False, max_abs_diff=float("inf"))
    if reference.size == 0:
        return Agreement(0, same_class=True, max_abs_diff=0.0)
    same = bool((reference.argmax(axis=1) == candidate.argmax(axis=1)).all())
    diff = float(np.abs(reference.astype(np.float64) - candidate).max())
    return Agreement(len(reference), same_class=same, max_abs_diff=diff)
