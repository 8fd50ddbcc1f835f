"""Dataset snapshots: which examples a run trains on and which it holds out, written down.

``build_snapshot`` is a pure function of the example table, the policy and the seed, so the
same cut of the log and seed always choose the same examples. The manifest names every frame
id used (with partition, offset, split, label, camera and condition) and how an epoch weights
them; its sha256 is the snapshot's identity.

Some examples are *emphasised*: those of the slices whose live accuracy dropped, when the
retrain request names them (``drifted``: ``camera=ID``, ``condition=NAME``), otherwise the
newest ones (see ``SamplingPolicy``). A run from scratch sees every training example once per
epoch and the emphasised ones ``repeat`` times. A *focused* run (one that fine-tunes earlier
weights, which already know the rest) sees the emphasised examples ``repeat`` times and a
fixed, seeded replay sample of the others, ``replay_ratio`` times as many, so that it learns
the new without forgetting the old in a fraction of the steps.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from services.training.settings import SamplingPolicy
from shared.datasets import ExampleRecord, ExampleTable, split_of

__all__ = ["Snapshot", "build_snapshot", "frame_ids_sha256", "slice_keys"]

SLICE_KINDS = ("camera", "condition")
"""The slice kinds an example belongs to, as the monitor names them (``kind=value``)."""


def slice_keys(record: ExampleRecord) -> tuple[str, str]:
    """The slices ``record`` belongs to, named as the monitor's per-slice accuracy names them:
    ``camera=ID`` and ``condition=NAME`` (``unknown`` without a condition)."""
    return f"camera={record.camera_id}", f"condition={record.condition or 'unknown'}"


def frame_ids_sha256(frame_ids: list[str]) -> str:
    """Hash of a set of frame ids (order-independent)."""
    h = hashlib.sha256()
    for fid in sorted(frame_ids):
        h.update(fid.encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class Snapshot:
    """The examples of one run: ``train`` (fitted on) and ``holdout`` (the fresh holdout)."""

    train: list[ExampleRecord]
    holdout: list[ExampleRecord]
    recent_size: int
    end_offsets: dict[int, int]
    policy: SamplingPolicy
    seed: int
    drifted: tuple[str, ...] = ()
    """Slices the retrain request says dropped (``camera=ID``, ``condition=NAME``), sorted."""
    focused: bool = False
    """An epoch is the emphasised examples and a replay sample of the others (warm runs)."""
    taken_at: datetime | None = None
    """When the examples were read (after their end offsets): see ``DatasetSnapshot``."""

    def labels(
        self, classes: tuple[str, ...], records: list[ExampleRecord] | None = None
    ) -> npt.NDArray[np.int64]:
        """Class indices of ``records`` (default: ``train``), in their order."""
        index = {c: i for i, c in enumerate(classes)}
        chosen = self.train if records is None else records
        return np.asarray([index[r.label] for r in chosen], dtype=np.int64)

    def weighted_slices(self) -> tuple[str, ...]:
        """The ``drifted`` slices an epoch weights up: of each kind, those that have training
        examples, unless together they hold every training example (all cameras dropped when
        night fell: the camera says nothing about which examples matter). Sorted."""
        present, named = self._present_slices(), self._named_slices()
        out: list[str] = []
        for kind in SLICE_KINDS:
            weighted = named[kind] & present[kind]
            if weighted and weighted != present[kind]:
                out.extend(weighted)
        return tuple(sorted(out))

    def _present_slices(self) -> dict[str, set[str]]:
        """Kind -> the slices of that kind the training examples belong to."""
        present: dict[str, set[str]] = {kind: set() for kind in SLICE_KINDS}
        for r in self.train:
            for key in slice_keys(r):
                present[key.split("=", 1)[0]].add(key)
        return present

    def _named_slices(self) -> dict[str, set[str]]:
        """Kind -> the ``drifted`` slices of that kind."""
        return {
            kind: {d for d in self.drifted if d.split("=", 1)[0] == kind} for kind in SLICE_KINDS
        }

    def wants_drift_examples(self, least: int) -> bool:
        """True while the request's drifted slices could be weighted but have fewer than
        ``least`` training examples: right after a drift, the new condition's labels are
        still arriving. False when the request names no slice, or names of each kind only
        slices that cover every training example (all cameras), which no wait changes."""
        present, named = self._present_slices(), self._named_slices()
        if not any(named[k] and not named[k] >= present[k] for k in SLICE_KINDS):
            return False
        return len(self.drifted_examples()) < least

    def drifted_examples(self) -> list[ExampleRecord]:
        """The training examples of the drift: those that belong, for every kind with
        ``weighted_slices``, to one of that kind's (night on cameras 1, 3 and 4: the night
        frames of those cameras, not every frame of theirs). In ``train`` order."""
        by_kind: dict[str, set[str]] = {}
        for key in self.weighted_slices():
            by_kind.setdefault(key.split("=", 1)[0], set()).add(key)
        if not by_kind:
            return []
        return [
            r
            for r in self.train
            if all(keys.intersection(slice_keys(r)) for keys in by_kind.values())
        ]

    def emphasis(self) -> tuple[str, list[ExampleRecord], int]:
        """What an epoch emphasises and how often it sees each: ``("slices",
        drifted_examples, drift_repeat)`` when there are such examples, at most the policy's
        ``drift_max_share`` of ``train``, else
        ``("newest", the policy's ``newest_examples`` newest, newest_repeat)`` (``train`` is
        in capture order: they are its tail), or ``("none", [], 1)``."""
        p = self.policy
        drifted = self.drifted_examples()
        if drifted and len(drifted) <= p.drift_max_share * len(self.train):
            return "slices", drifted, p.drift_repeat
        n = min(p.newest_examples, self.recent_size, len(self.train))
        if n == 0 or p.newest_repeat == 1:
            return "none", [], 1
        return "newest", list(self.train[-n:]), p.newest_repeat

    def replay(self) -> list[ExampleRecord]:
        """A focused epoch's sample of the examples not emphasised: ``replay_ratio`` times
        as many as the emphasised examples' views (all of them when there are fewer), drawn
        once with the snapshot's seed, in ``train`` order. Empty unless ``focused``."""
        by, emphasised, repeat = self.emphasis()
        if not self.focused or by == "none":
            return []
        chosen = {r.frame_id for r in emphasised}
        others = [r for r in self.train if r.frame_id not in chosen]
        k = min(len(others), round(self.policy.replay_ratio * len(emphasised) * repeat))
        picks = np.random.default_rng(self.seed).choice(len(others), size=k, replace=False)
        return [others[i] for i in sorted(picks.tolist())]

    def epoch_examples(self) -> list[ExampleRecord]:
        """What one epoch of the fit sees (module docstring): from scratch, every example of
        ``train`` once and each emphasised one ``repeat`` times in all; focused, the
        emphasised ``repeat`` times and the ``replay`` sample once (without an emphasis,
        every example once either way). A pure function of the snapshot: the fit's seeded
        shuffle does the rest."""
        by, emphasised, repeat = self.emphasis()
        if by == "none":
            return list(self.train)
        if self.focused:
            return emphasised * repeat + self.replay()
        return list(self.train) + emphasised * (repeat - 1)

    def weighting(self) -> dict[str, Any]:
        """How ``epoch_examples`` weights ``train``, for the manifest and the lineage:
        ``by`` (``slices``, ``newest`` or ``none``), the slices named and those weighted
        (none unless ``by`` is ``slices``), the repeat, how many examples it applies to,
        whether the epoch is focused and, if so, the size of its replay sample and of the
        epoch."""
        by, emphasised, repeat = self.emphasis()
        out: dict[str, Any] = {
            "drifted": list(self.drifted),
            "slices": list(self.weighted_slices()) if by == "slices" else [],
            "by": by,
            "repeat": repeat,
            "examples": len(emphasised),
        }
        if self.focused and by != "none":
            out |= {"focused": True, "replay": len(self.replay())}
            out["epoch"] = len(emphasised) * repeat + out["replay"]
        return out

    def per_class(self) -> dict[str, int]:
        return dict(sorted(Counter(r.label for r in self.train).items()))

    def per_condition(self) -> dict[str, int]:
        return dict(sorted(Counter(r.condition or "unknown" for r in self.train).items()))

    def manifest(self) -> dict[str, Any]:
        """The JSON document stored next to the weights: every example, exactly."""

        def rows(records: list[ExampleRecord]) -> list[list[Any]]:
            return [
                [r.frame_id, r.partition, r.offset, r.label, r.camera_id, r.condition]
                for r in records
            ]

        return {
            "columns": ["frame_id", "partition", "offset", "label", "camera_id", "condition"],
            "train": rows(self.train),
            "holdout": rows(self.holdout),
            "topic_offsets": {str(p): o for p, o in sorted(self.end_offsets.items())},
            "policy": self.policy.model_dump(),
            "seed": self.seed,
            "weighting": self.weighting(),
        }


def build_snapshot(
    table: ExampleTable, policy: SamplingPolicy, seed: int, drifted: Iterable[str] = ()
) -> Snapshot:
    """Choose the run's examples from ``table`` (see ``SamplingPolicy``); ``drifted`` are
    the slices whose examples an epoch weights up (``Snapshot.epoch_examples``).

    Newest first by capture time (ties by frame id, so the order is total); the older train
    split is sampled per class with ``seed``. The result lists examples in a canonical order
    (capture time, frame id) so that it does not depend on partition layout."""
    ordered = sorted(table.records, key=lambda r: (r.captured_at, r.frame_id))
    cut = max(len(ordered) - policy.recent_examples, 0)
    older, recent = ordered[:cut], ordered[cut:]

    def split(r: ExampleRecord) -> str:
        return split_of(r.frame_id, policy.holdout_share, policy.reference_share)

    train = [r for r in recent if split(r) == "train"]
    holdout = [r for r in recent if split(r) == "holdout"]
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[ExampleRecord]] = {}
    for r in older:
        if split(r) == "train":
            by_class.setdefault(r.label, []).append(r)
    sampled: list[ExampleRecord] = []
    for label in sorted(by_class):
        pool = by_class[label]
        if len(pool) <= policy.older_per_class:
            sampled.extend(pool)
        else:
            picks = rng.choice(len(pool), size=policy.older_per_class, replace=False)
            sampled.extend(pool[i] for i in sorted(picks.tolist()))
    chosen = sorted(sampled + train, key=lambda r: (r.captured_at, r.frame_id))
    return Snapshot(
        train=chosen,
        holdout=holdout,
        recent_size=len(recent),
        end_offsets=dict(table.end_offsets),
        policy=policy,
        seed=seed,
        drifted=tuple(sorted(set(drifted))),
    )
