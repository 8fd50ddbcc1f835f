"""The artifact store: model weights and dataset manifests, content-addressed by sha256.

An artifact reference (``uri``) is a path relative to the store root, for example
``models/3f/3fa9…c1.safetensors``. The root is a local directory (``var/artifacts`` by
default) or a volume that several containers mount at the same place, so the same reference
works in every service.

Safety rules, enforced on every read:

- A reference must stay inside the root: absolute paths, ``..`` segments, backslashes and
  symbolic links that lead outside are refused (``UnsafeReferenceError``).
- The bytes are hashed before they are parsed; a mismatch with the expected sha256 is refused
  (``IntegrityError``). Nothing is deserialised from unverified bytes.
- Weights are safetensors only: a header of tensor shapes and raw numbers, parsed without
  executing anything. A pickle (what ``torch.save`` writes) is refused (``FormatError``);
  this module never calls ``torch.load`` or ``pickle``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from shared.settings import ArtifactSettings

__all__ = [
    "ArtifactError",
    "ArtifactNotFoundError",
    "ArtifactRef",
    "ArtifactSettings",
    "ArtifactStore",
    "FormatError",
    "IntegrityError",
    "LoadedWeights",
    "UnsafeReferenceError",
    "parse_safetensors",
    "sha256_bytes",
]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_KIND = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_MAX_HEADER = 16 * 1024 * 1024


class ArtifactError(Exception):
    """An artifact that cannot be used. ``reason`` is a stable code for logs and events."""

    reason = "artifact_error"


class UnsafeReferenceError(ArtifactError):
    reason = "unsafe_reference"


class ArtifactNotFoundError(ArtifactError):
    reason = "artifact_not_found"


class IntegrityError(ArtifactError):
    reason = "integrity"


class FormatError(ArtifactError):
    reason = "format"


class ArtifactRef(BaseModel):
    """Where an artifact is and what its bytes hash to."""

    model_config = ConfigDict(frozen=True)

    uri: str
    sha256: str
    size: int


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class LoadedWeights:
    """A verified safetensors artifact: tensors by name and the string metadata."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]


class ArtifactStore:
    """Content-addressed files under ``root``. Writes are atomic (temporary file, fsync,
    rename), so a reader never sees half an artifact and a crash leaves at most an orphan
    temporary file, never a bad artifact."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    # -- writing -----------------------------------------------------------------------

    def put_bytes(self, data: bytes, kind: str, suffix: str) -> ArtifactRef:
        """Store ``data`` under ``<kind>/<sha[:2]>/<sha><suffix>``; idempotent."""
        if not _KIND.match(kind) or not re.match(r"^\.[a-z0-9]{1,16}$", suffix):
            raise ValueError(f"bad artifact kind or suffix: {kind!r} {suffix!r}")
        digest = sha256_bytes(data)
        uri = f"{kind}/{digest[:2]}/{digest}{suffix}"
        path = self.root / uri
        if not (path.exists() and path.stat().st_size == len(data)):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return ArtifactRef(uri=uri, sha256=digest, size=len(data))

    def put_weights(
        self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
    ) -> ArtifactRef:
        """Store a state dict as safetensors (contiguous CPU tensors) with ``metadata``."""
        clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        return self.put_bytes(st_save(clean, metadata=metadata), "models", ".safetensors")

    def put_json(self, obj: Any, kind: str) -> ArtifactRef:
        """Store ``obj`` as canonical JSON (sorted keys), so equal content has one hash."""
        data = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
        return self.put_bytes(data, kind, ".json")

    # -- reading -----------------------------------------------------------------------

    def resolve(self, uri: str) -> Path:
        """The file behind ``uri``, refusing anything that could leave the root.

        Raises UnsafeReferenceError."""
        if not uri or "\x00" in uri or "\\" in uri:
            raise UnsafeReferenceError(f"artifact reference {uri!r} is empty or has bad characters")
        pure = PurePosixPath(uri)
        if pure.is_absolute() or uri.startswith("~"):
            raise UnsafeReferenceError(
                f"artifact reference {uri!r} is absolute; references are relative to the store"
            )
        if any(part in ("..", ".") for part in uri.split("/")):
            raise UnsafeReferenceError(f"artifact reference {uri!r} contains '..' or '.' segments")
        path = (self.root / pure).resolve()
        if not path.is_relative_to(self.root):
            raise UnsafeReferenceError(f"artifact reference {uri!r} leads outside the store")
        return path

    def read_verified(self, uri: str, sha256: str) -> bytes:
        """The bytes of ``uri``, only if they hash to ``sha256``.

        Raises UnsafeReferenceError, ArtifactNotFoundError, IntegrityError."""
        if not _SHA256.match(sha256):
            raise IntegrityError(f"expected sha256 {sha256!r} is not 64 hex characters")
        path = self.resolve(uri)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactNotFoundError(f"artifact {uri} not found under {self.root}") from exc
        except IsADirectoryError as exc:
            raise ArtifactNotFoundError(f"artifact {uri} is a directory") from exc
        actual = sha256_bytes(data)
        if actual != sha256:
            raise IntegrityError(
                f"artifact {uri} is corrupt or was replaced: its sha256 is {actual}, "
                f"expected {sha256}; refusing to load it"
            )
        return data

    def load_weights(self, uri: str, sha256: str) -> LoadedWeights:
        """Verified safetensors weights and their metadata.

        Raises UnsafeReferenceError, ArtifactNotFoundError, IntegrityError, FormatError (not a
        safetensors file, for example a pickle)."""
        return parse_safetensors(self.read_verified(uri, sha256), f"artifact {uri}")

    def load_json(self, uri: str, sha256: str) -> Any:
        """A verified JSON artifact. Raises like ``read_verified``, and FormatError."""
        data = self.read_verified(uri, sha256)
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FormatError(f"artifact {uri} is not JSON: {exc}") from exc


def parse_safetensors(data: bytes, name: str) -> LoadedWeights:
    """The tensors and metadata of safetensors ``data``; ``name`` says what it is in errors
    (``"artifact models/…"``, ``"file x.safetensors"``). The framing is checked before the
    parser sees the bytes. Raises FormatError (not safetensors, for example a pickle)."""
    metadata = _safetensors_metadata(data, name)
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise FormatError(f"{name} is not a valid safetensors file: {exc}") from exc
    return LoadedWeights(tensors=tensors, metadata=metadata)


def _safetensors_metadata(data: bytes, uri: str) -> dict[str, str]:
    """Check the safetensors framing (8-byte little-endian header length, JSON header) and
    return its ``__metadata__``. A pickle or zip fails here, before any parsing library sees it."""
    if len(data) < 8:
        raise FormatError(f"{uri} is too short to be safetensors")
    (length,) = struct.unpack("<Q", data[:8])
    if length < 2 or length > min(_MAX_HEADER, len(data) - 8):
        raise FormatError(
            f"{uri} is not a safetensors file (weights must be safetensors; "
            "pickled checkpoints are refused)"
        )
    try:
        header = json.loads(data[8 : 8 + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{uri} has no readable safetensors header") from exc
    if not isinstance(header, dict):
        raise FormatError(f"{uri} has a malformed safetensors header")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise FormatError(f"{uri} has malformed metadata")
    return dict(meta)
