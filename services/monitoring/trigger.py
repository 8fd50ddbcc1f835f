"""The retrain trigger: when a drop in live accuracy becomes a retrain request.

A request fires only when

1. windows have at least ``min_labels`` labelled predictions (others neither count nor
   break a run),
2. the champion's accuracy stays below ``threshold`` for ``consecutive`` windows in a row,
3. and no earlier request is cooling down (``cooldown_s``).

The request names the slices (camera, condition) below the threshold in the window that fired
it, for training to weight their examples up. Its idempotency key names the drop: model,
version and the first bad window of the run. Replaying the same windows after a restart
yields the same key, so a drop never trains twice even if the monitor fires again; within
one run of bad windows it fires once.

The estimated accuracy (``services.monitoring.estimate``) finds a drop earlier, before its
labels arrive: when ``estimate_consecutive`` blocks of ``estimate_frames`` live predictions
in a row have their estimate's whole interval below ``threshold``, the drop is *suspected*.
Labels of predictions served since the first such block began then judge it, sequentially:
from ``confirm_min_labels`` on, as soon as the Wilson interval of their accuracy lies wholly
below ``threshold`` it is *confirmed*, wholly above it a *false alarm*; at ``confirm_labels``
their accuracy decides either way. A false alarm is counted and closes the drop; that
version's estimate is then not trusted again until one of its blocks is back above the
threshold, so a model whose calibration does not hold raises one false alarm, not one a
minute. With
``estimate="confirm"`` (the default) the request fires on confirmation: a few dozen labels
of the new world rather than two full windows that still count labels of the old one. With
``estimate="fire"`` it fires at suspicion, and a false alarm is a request the labels
contradicted. Either way the request carries the estimate as its evidence. Each rule opens
the drop of its version; while a drop is open, neither fires again for it (one request per
drop), and the cooldown holds between requests of any kind.

Labels find a drop on their own too, estimate or not (``watch_labels``): a CUSUM (Page's
cumulative sum) of the champion's labels in the order they arrive, each adding the
log-likelihood ratio of accuracy ``cusum_bad`` against ``cusum_ok`` (a wrong answer
``ln((1 - bad) / (1 - ok))``, a right one ``ln(bad / ok)``), floored at zero. Crossing
``cusum_h`` suspects a drop that began where the sum last left zero; labels arriving after
that judge it as above, so the sum only chooses when to look and the Wilson interval of
fresh labels decides. Simulated at the defaults (``tests/unit/test_trigger_cusum.py``), a
model right 85 % of the time crosses ``h`` by chance about once in 26,000 labels, one right
90 % or 95 % of the time not once in 300,000; after a drop to 55 % the sum crosses it within
a median of 29 labels, to 30 % within 14: a few seconds of labels. It catches the drops the
estimate misses: a model confidently wrong in a way that keeps its predicted class mix
plausible.

A drop that outlives its request (the candidate was refused at the gate, or lost the live
comparison) is asked for again, ``retry_after_s`` after the last request and at most
``max_attempts`` times in all; each attempt has its own key (``…:attempt-2``), so the retry
is one training too, however often the monitor restarts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.monitoring.estimate import normal_quantile
from shared.events import AccuracyEstimate, RetrainRequest, WindowMetrics

__all__ = ["Judgement", "RetrainTrigger", "Suspicion", "TriggerPolicy", "wilson_interval"]


def wilson_interval(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """The Wilson score interval of a proportion, ``successes`` of ``n`` (n > 0), at the
    two-sided ``confidence``: unlike the normal interval it stays inside [0, 1] and keeps
    its coverage for small ``n`` and proportions near 0 or 1."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    z = normal_quantile(0.5 + confidence / 2)
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * ((p * (1 - p) / n + z2 / (4 * n * n)) ** 0.5) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


class TriggerPolicy(BaseModel):
    """When a drop is a drop."""

    model_config = ConfigDict(frozen=True)

    threshold: float = Field(default=0.75, ge=0.0, le=1.0)
    """Live accuracy below this is bad. The simulator's day model scores above 0.95 by day and
    under 0.5 at night or in fog, so 0.75 separates them with room for window noise."""

    consecutive: int = Field(default=2, ge=1)
    """Bad windows in a row before a request fires (one bad window may be bad luck)."""

    min_labels: int = Field(default=100, ge=1)
    """Labelled predictions a window needs to count."""

    cooldown_s: float = Field(default=300.0, ge=0)
    """After a request, no other fires for this long: time for training, evaluation and the
    shadow comparison to answer (about two to three minutes on the simulator's stream)."""

    retry_after_s: float = Field(default=600.0, ge=0)
    """A drop still running this long after its last request is asked for again: by then the
    answer (a champion promoted on live evidence) is overdue, and more labels of the new world
    have arrived for the next attempt."""

    max_attempts: int = Field(default=3, ge=1)
    """Requests per drop in all; after that the drop waits for a person (its alert stands)."""

    estimate: Literal["off", "confirm", "fire"] = "confirm"
    """What a drop the estimate suspects does: ``confirm`` fires the request as soon as
    ``confirm_labels`` labels of the new frames confirm it; ``fire`` fires at once, before
    any label (ten seconds into a night here, when training would find no night examples
    yet: for streams whose labels come within seconds); ``off`` leaves drops to the windows'
    rule. The estimate itself is computed and published either way."""

    estimate_frames: int = Field(default=100, ge=20)
    """Live predictions per estimate block (5 s of the simulator's 20 frames/s). The
    interval of a day block's estimate (about 0.95) is then about 0.04 either side, far
    above the threshold; a night's (about 0.4) lies wholly below it."""

    estimate_consecutive: int = Field(default=1, ge=1)
    """Blocks in a row whose estimate lies wholly below ``threshold`` before a request fires.
    One block of 100 frames whose 95 % interval is wholly below is already strong evidence;
    the labels that follow judge it."""

    confirm_labels: int = Field(default=100, ge=1)
    """Labels (of predictions served since the first low block began) after which a
    suspected drop is judged on their accuracy alone, confirmed or a false alarm: at 100,
    the accuracy's standard error is 0.04 or less, and at 6 labels/s they take about 17 s to
    arrive."""

    confirm_min_labels: int = Field(default=20, ge=1)
    """From this many labels on, a suspicion is judged as soon as the labels are decisive:
    the Wilson interval of their accuracy at ``confirm_confidence`` wholly below the
    threshold (confirmed) or wholly above it (a false alarm). A night the day model gets
    right a third of the time is confirmed on 20 labels, in about 3 s of them."""

    confirm_confidence: float = Field(default=0.99, gt=0.5, lt=1.0)
    """Two-sided confidence of that interval."""

    watch_labels: bool = True
    """Whether the champion's labels raise a suspicion themselves (the CUSUM in the module
    docstring), estimate or not; what they suspect is judged like an estimated drop."""

    cusum_ok: float = Field(default=0.85, gt=0.0, lt=1.0)
    """Accuracy the label CUSUM takes as well (above ``threshold``)."""

    cusum_bad: float = Field(default=0.6, gt=0.0, lt=1.0)
    """Accuracy it looks for (below ``threshold``)."""

    cusum_h: float = Field(default=8.0, gt=0.0)
    """Its alarm level, in nats of evidence: at 8, a model at ``cusum_ok`` raises a
    suspicion about once in 26,000 labels (which fresh labels then clear), and a drop to
    0.55 is suspected within about 30 labels (module docstring)."""

    @model_validator(mode="after")
    def _cusum_straddles_threshold(self) -> TriggerPolicy:
        if not self.cusum_bad < self.threshold < self.cusum_ok:
            raise ValueError(
                f"cusum_bad ({self.cusum_bad}) < threshold ({self.threshold}) < cusum_ok "
                f"({self.cusum_ok}) must hold"
            )
        return self

    def cusum_step(self, correct: bool) -> float:
        """One label's log-likelihood ratio, accuracy ``cusum_bad`` against ``cusum_ok``."""
        if correct:
            return math.log(self.cusum_bad / self.cusum_ok)
        return math.log((1 - self.cusum_bad) / (1 - self.cusum_ok))


@dataclass(frozen=True)
class Suspicion:
    """A drop the estimate (``estimate``) or the labels' CUSUM (``labels``) suspects;
    ``request`` when it fires at once (``fire``)."""

    drop: str
    version: str
    estimate: AccuracyEstimate | None
    slices: list[str]
    request: RetrainRequest | None
    source: Literal["estimate", "labels"] = "estimate"
    labelled: int = 0
    """Labels behind a CUSUM's suspicion (since the sum last left zero)."""
    accuracy: float | None = None
    """Their accuracy."""


@dataclass(frozen=True)
class Judgement:
    """What labels said of a suspected drop; ``request`` when confirming it fired one."""

    drop: str
    version: str
    confirmed: bool
    accuracy: float
    labelled: int
    key: str
    request: RetrainRequest | None = None
    source: Literal["estimate", "labels"] = "estimate"


@dataclass
class RetrainTrigger:
    """Watches the champion's windows of one model (see the module docstring)."""

    model_name: str
    policy: TriggerPolicy = field(default_factory=TriggerPolicy)
    _run: list[str] = field(default_factory=list)
    _run_version: str | None = None
    _attempts: dict[str, int] = field(default_factory=dict)
    _last_fired: datetime | None = None
    _drops: dict[str, str] = field(default_factory=dict)
    """Version -> its open drop (the id its requests' keys name)."""
    _estimate_run: dict[str, list[str]] = field(default_factory=dict)
    """Version -> ids of the blocks in its current run of low estimates."""
    _distrusted: set[str] = field(default_factory=set)
    """Versions whose suspicion labels contradicted, until an estimate of theirs is fine."""
    _pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Drop -> the labels counted so far to judge its estimated request."""
    _cusum: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Version -> its label CUSUM: the sum, labels seen, and the excursion above zero."""
    confirmed: int = 0
    """Estimated requests that labels confirmed."""
    false_alarms: int = 0
    """Estimated requests that labels contradicted."""

    def state(self) -> dict[str, Any]:
        """The trigger's state as JSON (kept in the monitor's table across restarts)."""
        return {
            "run": list(self._run),
            "run_version": self._run_version,
            "attempts": dict(sorted(self._attempts.items())),
            "last_fired": self._last_fired.isoformat() if self._last_fired else None,
            "drops": dict(sorted(self._drops.items())),
            "estimate_run": {v: list(r) for v, r in sorted(self._estimate_run.items())},
            "pending": {d: dict(p) for d, p in sorted(self._pending.items())},
            "distrusted": sorted(self._distrusted),
            "cusum": {v: dict(c) for v, c in sorted(self._cusum.items())},
            "confirmed": self.confirmed,
            "false_alarms": self.false_alarms,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state()`` of an earlier trigger."""
        self._run = [str(w) for w in state.get("run", [])]
        self._run_version = state.get("run_version")
        attempts = state.get("attempts")
        if attempts is None:  # written before retries: every drop named there fired once
            attempts = dict.fromkeys(state.get("fired_for", []), 1)
        self._attempts = {str(w): int(n) for w, n in attempts.items()}
        last = state.get("last_fired")
        self._last_fired = datetime.fromisoformat(last) if last else None
        self._drops = {str(v): str(d) for v, d in state.get("drops", {}).items()}
        self._estimate_run = {
            str(v): [str(b) for b in r] for v, r in state.get("estimate_run", {}).items()
        }
        self._pending = {str(d): dict(p) for d, p in state.get("pending", {}).items()}
        self._distrusted = {str(v) for v in state.get("distrusted", [])}
        self._cusum = {str(v): dict(c) for v, c in state.get("cusum", {}).items()}
        self.confirmed = int(state.get("confirmed", 0))
        self.false_alarms = int(state.get("false_alarms", 0))

    def _key(self, drop: str, attempt: int) -> str:
        key = f"drop:{self.model_name}:{drop}"
        return key if attempt == 1 else f"{key}:attempt-{attempt}"

    def _cooling(self, now: datetime, attempt: int) -> bool:
        p = self.policy
        since = (now - self._last_fired).total_seconds() if self._last_fired else None
        return since is not None and since < (p.cooldown_s if attempt == 1 else p.retry_after_s)

    def observe_estimate(
        self,
        version: str,
        block_id: str,
        estimate: AccuracyEstimate,
        started_at: datetime,
        slices: list[str],
        now: datetime,
    ) -> Suspicion | None:
        """The drop this block's estimated accuracy makes suspect, if any (module
        docstring), with its request when the policy fires at once."""
        p = self.policy
        if p.estimate == "off":
            return None
        if estimate.high >= p.threshold:
            self._estimate_run.pop(version, None)
            self._distrusted.discard(version)
            return None
        if version in self._distrusted:
            return None
        run = self._estimate_run.setdefault(version, [])
        run.append(block_id)
        if len(run) < p.estimate_consecutive or version in self._drops:
            return None
        fire = p.estimate == "fire"
        if fire and self._cooling(now, 1):
            return None
        drop = run[0]
        self._drops[version] = drop
        self._pending[drop] = {
            "version": version,
            "since": started_at.isoformat(),
            "correct": 0,
            "labelled": 0,
            "estimate": estimate.model_dump(mode="json"),
            "slices": list(slices),
        }
        request = None
        if fire:
            self._attempts[drop] = 1
            self._last_fired = now
            request = self._estimated_request(drop, version, estimate, slices, None)
        return Suspicion(drop, version, estimate, list(slices), request)

    def _estimated_request(
        self,
        drop: str,
        version: str,
        estimate: AccuracyEstimate | None,
        slices: list[str],
        confirmed: tuple[float, int] | None,
    ) -> RetrainRequest:
        """The request of a suspected drop: on the estimate (its evidence) or on the labels
        the CUSUM watched (no estimate)."""
        p = self.policy
        if estimate is not None:
            reason = (
                f"estimated accuracy of {version} below {p.threshold:.2f}: {estimate.value:.3f} "
                f"({estimate.low:.3f}-{estimate.high:.3f}) on {estimate.frames} frames, by "
                f"{estimate.method}"
            )
        else:
            reason = f"live accuracy of {version} below {p.threshold:.2f}: its labels dropped"
        if confirmed is not None:
            reason += f"; confirmed by {confirmed[1]} labels at {confirmed[0]:.3f}"
        return RetrainRequest(
            source="monitoring",
            model_name=self.model_name,
            idempotency_key=self._key(drop, 1),
            reason=reason,
            trigger="monitor",
            evidence=estimate,
            slices=slices,
        )

    def watch_label(
        self,
        version: str,
        served_at: datetime,
        correct: bool,
    ) -> Suspicion | None:
        """Add one live label of ``version`` to its CUSUM (module docstring); the drop it
        makes suspect when the sum crosses ``cusum_h``, if any. Call it after
        ``observe_label``: the labels that raised a suspicion do not judge it."""
        p = self.policy
        if not p.watch_labels:
            return None
        c = self._cusum.setdefault(version, {"sum": 0.0, "seen": 0})
        c["seen"] += 1
        total = max(0.0, c["sum"] + p.cusum_step(correct))
        if total == 0.0:
            self._cusum[version] = {"sum": 0.0, "seen": c["seen"]}
            return None
        if c["sum"] == 0.0:  # an excursion begins
            c.update(since=served_at.isoformat(), start=c["seen"], correct=0, labelled=0)
        c["sum"] = total
        c["labelled"] += 1
        c["correct"] += int(correct)
        c["since"] = min(datetime.fromisoformat(c["since"]), served_at).isoformat()
        if total < p.cusum_h:
            return None
        self._cusum[version] = {"sum": 0.0, "seen": c["seen"]}
        if version in self._drops:
            return None  # already suspected, requested or judged: one drop at a time
        drop = f"{version}:labels:{c['start']}"
        self._drops[version] = drop
        self._pending[drop] = {
            "version": version,
            "since": c["since"],
            "correct": 0,
            "labelled": 0,
            "estimate": None,
            "slices": [],
            "source": "labels",
        }
        n = int(c["labelled"])
        return Suspicion(drop, version, None, [], None, "labels", n, c["correct"] / n)

    def observe_label(
        self,
        version: str,
        served_at: datetime,
        correct: bool,
        now: datetime,
        slices: tuple[str, ...] = (),
    ) -> Judgement | None:
        """Count one live label towards judging the suspected drops of ``version``; the
        judgement it completes, if any, with the request a confirmation fires."""
        for drop, pending in list(self._pending.items()):
            if pending["version"] != version:
                continue
            if served_at < datetime.fromisoformat(pending["since"]):
                continue
            pending["labelled"] += 1
            pending["correct"] += int(correct)
            counted = pending.setdefault("by_slice", {})
            for key in slices:
                cell = counted.setdefault(key, [0, 0])
                cell[0] += int(correct)
                cell[1] += 1
            n = pending["labelled"]
            verdict = self._verdict(pending["correct"], n)
            if verdict is None:
                continue
            del self._pending[drop]
            accuracy, confirmed = pending["correct"] / n, verdict
            request = None
            if confirmed:
                self.confirmed += 1
                if self._attempts.get(drop, 0) == 0 and not self._cooling(now, 1):
                    self._attempts[drop] = 1
                    self._last_fired = now
                    estimate = pending.get("estimate")
                    request = self._estimated_request(
                        drop,
                        version,
                        AccuracyEstimate.model_validate(estimate) if estimate else None,
                        self._confirmed_slices(pending),
                        (accuracy, n),
                    )
            else:
                self.false_alarms += 1
                if pending.get("source", "estimate") == "estimate":
                    self._distrusted.add(version)
                    self._estimate_run.pop(version, None)
                if self._drops.get(version) == drop:
                    del self._drops[version]
            return Judgement(
                drop,
                version,
                confirmed,
                accuracy,
                n,
                self._key(drop, 1),
                request,
                pending.get("source", "estimate"),
            )
        return None

    def _verdict(self, correct: int, n: int) -> bool | None:
        """Whether ``correct`` of ``n`` labels confirm the drop (True), contradict it (False)
        or do not decide yet (None): decisive early, by the point estimate at the most."""
        p = self.policy
        if n >= p.confirm_labels:
            return correct / n < p.threshold
        if n < p.confirm_min_labels:
            return None
        low, high = wilson_interval(correct, n, p.confirm_confidence)
        if high < p.threshold:
            return True
        if low > p.threshold:
            return False
        return None

    def _confirmed_slices(self, pending: dict[str, Any]) -> list[str]:
        """The slices the confirming labels found below the threshold (on at least a tenth
        of them), else the cameras the estimate named: what training weights up."""
        n = int(pending["labelled"])
        low = sorted(
            key
            for key, (right, seen) in pending.get("by_slice", {}).items()
            if seen >= max(1, n // 10) and right / seen < self.policy.threshold
        )
        return low or [str(x) for x in pending.get("slices", [])]

    def observe(self, window: WindowMetrics, now: datetime) -> RetrainRequest | None:
        """The request this window fires, if any."""
        p = self.policy
        if window.shadow or window.model_name != self.model_name:
            return None
        if window.accuracy is None or window.labelled_count < p.min_labels:
            return None
        if window.model_version != self._run_version:
            self._run, self._run_version = [], window.model_version
        version = window.model_version
        if window.accuracy >= p.threshold:
            self._run = []
            drop = self._drops.get(version)
            if drop is not None and drop not in self._pending:
                del self._drops[version]  # the drop is over
            return None
        self._run.append(window.window_id)
        if len(self._run) < p.consecutive:
            return None
        drop = self._drops.get(version, self._run[0])
        attempt = self._attempts.get(drop, 0) + 1
        if attempt > p.max_attempts:
            return None
        if self._cooling(now, attempt):
            return None
        self._drops[version] = drop
        self._attempts[drop] = attempt
        self._last_fired = now
        return RetrainRequest(
            source="monitoring",
            model_name=self.model_name,
            idempotency_key=self._key(drop, attempt),
            reason=(
                f"live accuracy of {window.model_version} below {p.threshold:.2f} for "
                f"{len(self._run)} windows (last {window.accuracy:.3f} on "
                f"{window.labelled_count} labels)"
                + (f"; attempt {attempt} of {p.max_attempts}" if attempt > 1 else "")
            ),
            trigger="monitor",
            window_ids=list(self._run),
            slices=sorted(k for k, a in window.per_slice_accuracy.items() if a < p.threshold),
        )
