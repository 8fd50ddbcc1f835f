"""The evaluation gate: bless or reject a candidate model from its holdout reports.

A holdout (the service uses ``"fresh"`` and ``"reference"``) is *evaluable* when its report
exists and has at least ``min_holdout_size`` examples. The rules:

1. at least one holdout must be evaluable for the candidate, otherwise the candidate is
   rejected ("no holdout has at least N examples");
2. floor: on every holdout evaluable for the candidate, accuracy >= ``min_accuracy``;
3. with a champion, on every holdout evaluable for both models:
   - accuracy may be at most ``max_accuracy_drop`` below the champion's;
   - each class's recall may be at most ``max_recall_drop`` below the champion's, plus the
     noise of the two recalls at that support (``recall_noise_z`` standard errors of their
     difference), compared only when the class has at least ``min_class_support`` examples
     in that holdout;
4. without a champion only the floor applies, and a skipped ``champion`` check says so.

Checks that cannot run are still listed, as skipped, with the reason, so a verdict always
explains itself. Checks come in a fixed order: ``evaluable``, ``champion`` (only without a
champion), then per holdout in name order: ``floor``, ``accuracy_drop``, ``recall_drop`` per
class in the candidate's class order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.evaluation.metrics import Report

__all__ = ["Check", "GateResult", "GateThresholds", "gate"]

# Accuracies and recalls are ratios of counts; a difference exactly at the tolerance
# (0.80 - 0.70 vs 0.10) can land a rounding error above it and must not flip the verdict.
_EPS = 1e-9


class GateThresholds(BaseModel):
    """What a candidate must achieve to be blessed."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    min_accuracy: float = Field(default=0.6, ge=0.0, le=1.0)
    """Absolute accuracy floor, applied to every evaluable holdout, champion or not."""

    max_accuracy_drop: float = Field(default=0.02, ge=0.0, le=1.0)
    """How far the candidate's accuracy may fall below the champion's on each holdout."""

    max_recall_drop: float = Field(default=0.10, ge=0.0, le=1.0)
    """How far each class's recall may fall below the champion's on each holdout."""

    recall_noise_z: float = Field(default=1.645, ge=0.0)
    """A class's recall drop blocks only beyond ``max_recall_drop`` plus this many standard
    errors of the difference of the two recalls, ``sqrt(p1(1-p1)/n1 + p2(1-p2)/n2)``. A
    class has 20-100 examples in a holdout, where one example moves its recall by one to
    five points: 5 buses of 45 missed (1.000 to 0.889) is noise at this support, a class
    collapsing (0.95 to 0.60) is not. 1.645 is one-sided 95 %; 0 makes the drop a plain
    tolerance. Accuracy, over the whole holdout, keeps a plain tolerance."""

    min_class_support: int = Field(default=20, ge=1)
    """A class's recall is compared only when the holdout has at least this many examples
    of it; fewer make the recall too noisy to block on."""

    min_holdout_size: int = Field(default=50, ge=1)
    """A holdout with fewer examples is not evaluable: its checks are skipped, saying so."""


class Check(BaseModel):
    """One rule applied to one holdout (or to the whole candidate).

    A skipped check did not run and never blocks: ``passed`` is True and ``skipped`` True.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    """``"evaluable"``, ``"champion"``, ``"floor:<holdout>"``,
    ``"accuracy_drop:<holdout>"``, ``"recall_drop:<holdout>"`` (skipped as a whole) or
    ``"recall_drop:<holdout>:<class>"``."""
    passed: bool
    skipped: bool = False
    detail: str
    """A sentence with the numbers, e.g. "fresh accuracy 0.412 is below the floor 0.600"."""


class GateResult(BaseModel):
    """The verdict and the checks behind it."""

    model_config = ConfigDict(frozen=True)

    verdict: Literal["blessed", "rejected"]
    reasons: list[str]
    """Rejected: the detail of every failed check. Blessed: the detail of every check,
    passed or skipped, in check order."""
    checks: list[Check]


def gate(
    candidate: Mapping[str, Report | None],
    champion: Mapping[str, Report | None] | None,
    thresholds: GateThresholds,
) -> GateResult:
    """Judge ``candidate`` against ``thresholds`` and, when there is one, the ``champion``.

    Both mappings are keyed by holdout name; a holdout missing from a mapping counts as a
    None report. ``champion=None`` means there is no champion (only the floor applies); a
    champion whose report for a holdout is None or too small just skips the comparisons on
    that holdout. The rules and the order of the checks are in the module docstring.
    """
    t = thresholds
    has_champion = champion is not None
    champ = champion or {}
    holdouts = sorted(set(candidate) | set(champ))

    checks: list[Check] = []
    evaluable = [h for h in holdouts if _evaluable(candidate.get(h), t)]
    if evaluable:
        sizes = ", ".join(f"{h} ({_size(candidate.get(h))} examples)" for h in evaluable)
        checks.append(Check(name="evaluable", passed=True, detail=f"evaluable holdouts: {sizes}"))
    else:
        checks.append(
            Check(
                name="evaluable",
                passed=False,
                detail=f"no holdout has at least {t.min_holdout_size} examples",
            )
        )
    if not has_champion:
        checks.append(
            _skipped("champion", "no champion to compare against: only the accuracy floor applies")
        )
    for holdout in holdouts:
        checks.extend(
            _holdout_checks(holdout, candidate.get(holdout), champ.get(holdout), has_champion, t)
        )

    failed = [c.detail for c in checks if not c.passed]
    if failed:
        return GateResult(verdict="rejected", reasons=failed, checks=checks)
    return GateResult(verdict="blessed", reasons=[c.detail for c in checks], checks=checks)


def _holdout_checks(
    holdout: str,
    cand: Report | None,
    champ: Report | None,
    has_champion: bool,
    t: GateThresholds,
) -> list[Check]:
    if cand is None or not _evaluable(cand, t):
        why = _why_not_evaluable("the candidate", holdout, cand, t)
        checks = [_skipped(f"floor:{holdout}", f"{holdout} floor not checked: {why}")]
        if has_champion:
            checks += _comparison_skipped(holdout, why)
        return checks

    checks = [_floor(holdout, cand, t)]
    if not has_champion:
        return checks
    if champ is None or not _evaluable(champ, t):
        why = _why_not_evaluable("the champion", holdout, champ, t)
        return checks + _comparison_skipped(holdout, why)

    checks.append(_accuracy_drop(holdout, cand, champ, t))
    # Candidate's classes first, in their configured order; a class only the champion knows
    # still gets a (skipped) line so the mismatch is visible.
    names = list(cand.per_class) + [c for c in champ.per_class if c not in cand.per_class]
    checks.extend(_recall_drop(holdout, name, cand, champ, t) for name in names)
    return checks


def _floor(holdout: str, cand: Report, t: GateThresholds) -> Check:
    name = f"floor:{holdout}"
    acc, floor = cand.accuracy, t.min_accuracy
    if acc >= floor - _EPS:
        return Check(
            name=name,
            passed=True,
            detail=f"{holdout} accuracy {acc:.3f} meets the floor {floor:.3f}",
        )
    return Check(
        name=name,
        passed=False,
        detail=f"{holdout} accuracy {acc:.3f} is below the floor {floor:.3f}",
    )


def _drop_check(
    name: str, what: str, new: float, old: float, allowed: float, note: str = ""
) -> Check:
    """Passes when ``new`` is at most ``allowed`` below the champion's ``old``."""
    drop = old - new
    if drop <= 0:
        return Check(
            name=name,
            passed=True,
            detail=f"{what} {new:.3f} is not below the champion's {old:.3f}{note}",
        )
    within = drop <= allowed + _EPS
    detail = (
        f"{what} {new:.3f} is {drop:.3f} below the champion's {old:.3f}, "
        f"{'within' if within else 'more than'} the allowed {allowed:.3f}{note}"
    )
    return Check(name=name, passed=within, detail=detail)


def _accuracy_drop(holdout: str, cand: Report, champ: Report, t: GateThresholds) -> Check:
    return _drop_check(
        f"accuracy_drop:{holdout}",
        f"{holdout} accuracy",
        cand.accuracy,
        champ.accuracy,
        t.max_accuracy_drop,
    )


def _recall_drop(holdout: str, cls: str, cand: Report, champ: Report, t: GateThresholds) -> Check:
    name = f"recall_drop:{holdout}:{cls}"
    prefix = f"{holdout} recall of {cls}"
    mine, theirs = cand.per_class.get(cls), champ.per_class.get(cls)
    if mine is None or theirs is None:
        who = "candidate" if mine is None else "champion"
        return _skipped(name, f"{prefix} not compared: the {who}'s report has no such class")
    # Both reports should come from the same examples; if they do not, the smaller support
    # is the one that limits how much the comparison can be trusted.
    support = min(mine.support, theirs.support)
    if support < t.min_class_support:
        return _skipped(
            name, f"{prefix} not compared: support {support} is below {t.min_class_support}"
        )
    noise = t.recall_noise_z * math.sqrt(
        mine.recall * (1 - mine.recall) / mine.support
        + theirs.recall * (1 - theirs.recall) / theirs.support
    )
    note = f" (support {support})" if noise < 5e-4 else f" (noise {noise:.3f} at support {support})"
    return _drop_check(name, prefix, mine.recall, theirs.recall, t.max_recall_drop + noise, note)


def _comparison_skipped(holdout: str, why: str) -> list[Check]:
    return [
        _skipped(f"accuracy_drop:{holdout}", f"{holdout} accuracy drop not checked: {why}"),
        _skipped(f"recall_drop:{holdout}", f"{holdout} recall drops not checked: {why}"),
    ]


def _skipped(name: str, detail: str) -> Check:
    return Check(name=name, passed=True, skipped=True, detail=detail)


def _evaluable(report: Report | None, t: GateThresholds) -> bool:
    return report is not None and report.n >= t.min_holdout_size


def _size(report: Report | None) -> int:
    return 0 if report is None else report.n


def _why_not_evaluable(who: str, holdout: str, report: Report | None, t: GateThresholds) -> str:
    if report is None:
        return f"{who} has no {holdout} report"
    return f"{who}'s {holdout} holdout has {report.n} examples, fewer than {t.min_holdout_size}"
