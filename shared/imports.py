"""Weights trained elsewhere, made into StreamLoop artifacts; starting weights for training.

``streamloop models import`` and the registry's ``POST /models/import`` call
``import_weights``: the file must be safetensors (a pickle is refused before any parser sees
it), its tensors must be exactly the state dict of the named architecture for the given
classes and input size, and it is stored as an ordinary artifact, with the spec, so that
evaluation and serving build it like any trained model. A torch checkpoint becomes
safetensors only through ``convert_checkpoint``, which loads it with ``weights_only=True``.

``starting_state`` gives training the tensors of an earlier version to start from
(``STREAMLOOP_TRAINING_INIT=imported:VERSION``), without the classifier head when the class
lists differ.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save as st_save
from torch import nn

from shared.artifacts import ArtifactStore, parse_safetensors, sha256_bytes
from shared.events import ImportedWeights
from shared.model import ModelSpec, build_model
from shared.settings import TaskSettings
from shared.zoo import check_input_size

__all__ = [
    "ImportRefusedError",
    "convert_checkpoint",
    "head_keys",
    "import_weights",
    "parse_input_size",
    "spec_for_import",
    "starting_state",
]

_WRAPPED = "network."
"""Prefix of a torchvision network's keys inside ``NormalizedInput``."""
_DATA_PARALLEL = "module."
"""Prefix ``DataParallel``/``DistributedDataParallel`` checkpoints put on every key."""
_COUNTERS = "num_batches_tracked"
"""Batch-norm buffers some exporters leave out; they do not affect inference."""
_SHOWN = 5
"""Keys named in an error, of each kind."""


class ImportRefusedError(ValueError):
    """The file cannot become a model of the given spec; the message says why."""


def parse_input_size(text: str) -> tuple[int, int]:
    """``"WxH"`` as ``(height, width)``. Raises ValueError."""
    m = re.fullmatch(r"\s*(\d{1,4})\s*[xX]\s*(\d{1,4})\s*", text)
    if not m or not int(m[1]) or not int(m[2]):
        raise ValueError(f"input size must be WIDTHxHEIGHT, for example 64x64, not {text!r}")
    return int(m[2]), int(m[1])


def spec_for_import(
    architecture: str, classes: str, input_size: str | None, task: TaskSettings
) -> ModelSpec:
    """The spec imported weights are checked against: ``architecture``, the comma-separated
    ``classes`` in output order, and ``input_size`` (``WxH``; the task's input size when
    None), with the input normalisation new models of that architecture get. Raises
    ImportRefusedError."""
    names = tuple(c.strip() for c in classes.split(",") if c.strip())
    if len(names) < 2 or len(set(names)) != len(names):
        raise ImportRefusedError(f"classes must name at least two distinct classes: {classes!r}")
    try:
        height, width = (
            parse_input_size(input_size) if input_size else (task.image_height, task.image_width)
        )
        check_input_size(architecture, height, width)
        return ModelSpec.for_architecture(architecture, names, height, width)
    except ValueError as exc:  # pydantic's ValidationError is one
        raise ImportRefusedError(str(exc)) from exc


def import_weights(
    data: bytes,
    file_name: str,
    spec: ModelSpec,
    store: ArtifactStore,
    *,
    actor: str,
    note: str = "",
) -> ImportedWeights:
    """Check that ``data`` (a safetensors file) is a state dict of ``build_model(spec)`` and
    store it as a model artifact carrying ``spec``.

    Keys may be torchvision's own (``fc.weight``) or as StreamLoop stores them
    (``network.fc.weight``); a ``module.`` prefix on every key is dropped. Floating-point
    tensors are stored as float32. Batch-norm batch counters may be missing.

    Raises FormatError (not safetensors) and ImportRefusedError (the tensors do not fit the
    spec, or the spec cannot be built)."""
    name = Path(file_name).name or "weights"
    loaded = parse_safetensors(data, f"file {name}")
    try:
        model = build_model(spec)
    except ValueError as exc:
        raise ImportRefusedError(str(exc)) from exc
    expected = model.state_dict()
    given = _canonical_keys(loaded.tensors, expected)
    _check_fits(given, expected, spec)
    state = {
        k: (given[k].to(torch.float32) if v.is_floating_point() else given[k].to(v.dtype))
        if k in given
        else v
        for k, v in expected.items()
    }
    model.load_state_dict(state, strict=True)
    file_sha = sha256_bytes(data)
    ref = store.put_weights(model.state_dict(), spec.to_metadata({"imported": file_sha}))
    return ImportedWeights(
        file_name=name[:255],
        file_sha256=file_sha,
        artifact_uri=ref.uri,
        artifact_sha256=ref.sha256,
        actor=actor,
        note=note,
    )


def _canonical_keys(
    tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    out = dict(tensors)
    if out and all(k.startswith(_DATA_PARALLEL) for k in out):
        out = {k[len(_DATA_PARALLEL) :]: v for k, v in out.items()}
    wrapped = all(k.startswith(_WRAPPED) for k in expected)
    if wrapped and out and not any(k.startswith(_WRAPPED) for k in out):
        out = {_WRAPPED + k: v for k, v in out.items()}
    return out


def _check_fits(
    given: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], spec: ModelSpec
) -> None:
    missing = [k for k in expected if k not in given and not k.endswith(_COUNTERS)]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k} {tuple(given[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in given and given[k].shape != v.shape
    ]
    if not (missing or unexpected or shapes):
        return
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
            problems.append(f"{label}: {', '.join(keys[:_SHOWN])}{more}")
    raise ImportRefusedError(
        f"the tensors are not a {spec.architecture} for {len(spec.classes)} classes at "
        f"{spec.image_width}x{spec.image_height}: " + "; ".join(problems)
    )


def convert_checkpoint(source: Path, target: Path) -> int:
    """Write the state dict in torch checkpoint ``source`` to ``target`` as safetensors and
    return the number of tensors. The checkpoint is read with ``weights_only=True``: tensors,
    plain containers and numbers only, never arbitrary objects. It may be a state dict, or a
    dict holding one under ``state_dict``, ``model_state_dict`` or ``model``.

    Raises ImportRefusedError when it holds anything else or cannot be read that way."""
    try:
        obj = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, OSError, ...
        raise ImportRefusedError(
            f"{source.name} cannot be read as a weights-only torch checkpoint: {exc}"
        ) from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise ImportRefusedError(f"{source.name} holds no state dict")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise ImportRefusedError(
            f"{source.name}: not a state dict; these entries are not tensors: {', '.join(bad[:5])}"
        )
    tensors = {k: v.detach().cpu().contiguous() for k, v in obj.items()}
    target.write_bytes(st_save(tensors))
    return len(tensors)


def head_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier head: the last linear layer's weight and bias."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        return set()
    return {k for k in model.state_dict() if k.rsplit(".", 1)[0] == last}


def starting_state(
    model: nn.Module, tensors: Mapping[str, torch.Tensor], *, keep_head: bool
) -> dict[str, torch.Tensor]:
    """The state dict ``model`` starts training from: ``tensors``, except the classifier
    head, which keeps ``model``'s fresh initialisation unless ``keep_head``.

    Raises ValueError when ``tensors`` is not the same network apart from the head."""
    own = model.state_dict()
    head = set() if keep_head else head_keys(model)
    out: dict[str, torch.Tensor] = {}
    wrong = []
    for k, v in own.items():
        if k in head:
            out[k] = v
        elif k not in tensors or tensors[k].shape != v.shape:
            wrong.append(k)
        else:
            out[k] = tensors[k].to(v.dtype)
    if wrong:
        raise ValueError(
            f"the starting weights are not this network: {len(wrong)} tensors missing or of "
            f"another shape, such as {', '.join(wrong[:_SHOWN])}"
        )
    return out
