"""The monitor: windows, the retrain trigger, label-free drift and the live comparison, for one
model, driven by the joined stream.

``Monitor`` is pure. The faust app feeds it three kinds of observation, in the order it reads
them from its single-partition observations topic:

- ``on_prediction``: a prediction arrived (label-free signals of its version's window);
- ``on_label``: a prediction's label arrived (accuracy of the window open now; it may close);
- ``on_pair``: champion and challenger both predicted a frame whose label arrived (the live
  comparison the registry promotes or rolls back on: published every ``compare_every`` shared
  labelled frames, and, while the pair is young, on every frame one of them alone got right);

and ``tick`` closes quiet windows by time. Each call returns the events to publish. Its state
is a handful of JSON documents (``state_keys`` / ``dump`` / ``load``) that the app keeps in a
table, so a restarted monitor carries on with the same window numbering, the same trigger
state and the same comparisons: a drop never fires twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.monitoring.drift import DriftPolicy, detect_drift
from services.monitoring.estimate import FullBlock, LabelPrior
from services.monitoring.selection import LabelSelector, Pick, SelectionPolicy
from services.monitoring.trigger import Judgement, RetrainTrigger, Suspicion, TriggerPolicy
from services.monitoring.windows import Closed, Observation, Stream, WindowBook, WindowPolicy
from shared.events import (
    Alert,
    LabelRequest,
    LiveComparison,
    RetrainRequest,
    WindowMetrics,
    derived_id,
)

__all__ = ["Monitor", "MonitorPolicy", "Outputs", "PairCounts"]

SOURCE = "monitoring"


class MonitorPolicy(BaseModel):
    """Everything that decides what the monitor publishes."""

    model_config = ConfigDict(frozen=True)

    window: WindowPolicy = WindowPolicy()
    trigger: TriggerPolicy = TriggerPolicy()
    drift: DriftPolicy = DriftPolicy()
    requests: SelectionPolicy = SelectionPolicy()
    compare_every: int = Field(default=50, ge=1)
    """Publish the champion/challenger comparison each time this many more shared labelled
    frames have been counted."""
    compare_early: int = Field(default=200, ge=0)
    """While a pair has at most this many shared labelled frames, also publish its comparison
    on every discordant frame (one model right, the other wrong): only those move the
    registry's sequential test, and a clear winner is decided on a dozen of them. At most
    this many extra comparisons per pair; 0 publishes every ``compare_every`` only."""


@dataclass
class Outputs:
    """What one call asks the app to publish."""

    windows: list[WindowMetrics] = field(default_factory=list)
    retrains: list[RetrainRequest] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    label_requests: list[LabelRequest] = field(default_factory=list)
    comparisons: list[LiveComparison] = field(default_factory=list)

    def extend(self, other: Outputs) -> None:
        self.windows += other.windows
        self.retrains += other.retrains
        self.alerts += other.alerts
        self.label_requests += other.label_requests
        self.comparisons += other.comparisons

    def __bool__(self) -> bool:
        return bool(
            self.windows or self.retrains or self.alerts or self.label_requests or self.comparisons
        )


def _alert(
    kind: str,
    severity: Literal["info", "warning", "critical"],
    cause: str,
    message: str,
    version: str,
    details: dict[str, Any],
    camera_id: str | None = None,
) -> Alert:
    """An alert whose id is derived from its kind and cause (a replay re-sends the same)."""
    return Alert(
        event_id=derived_id("alert", kind, cause),
        source=SOURCE,
        severity=severity,
        kind=kind,
        message=message,
        model_version=version,
        camera_id=camera_id,
        details=details,
    )


class PairCounts(BaseModel):
    """Champion and challenger on the same labelled frames, since the pair was first seen.

    ``champion_only`` and ``challenger_only`` count the discordant frames (exactly one of the
    two right). A document written before they were counted loads with both at 0: they then
    count from the restart on, still a fair sample for the registry's test (where it starts
    does not depend on the outcomes), while the accuracies keep the whole history."""

    champion: str
    challenger: str
    labelled: int = 0
    champion_correct: int = 0
    challenger_correct: int = 0
    champion_only: int = 0
    """Frames the champion got right and the challenger wrong."""
    challenger_only: int = 0
    """Frames the challenger got right and the champion wrong."""
    since: datetime
    until: datetime


class Monitor:
    """One model's monitoring state and decisions (see the module docstring)."""

    def __init__(self, model_name: str, classes: Sequence[str], policy: MonitorPolicy) -> None:
        self.model_name = model_name
        self.classes = tuple(classes)
        self.policy = policy
        self.books: dict[str, WindowBook] = {}
        self.pairs: dict[str, PairCounts] = {}
        self.trigger = RetrainTrigger(model_name, policy.trigger)
        self.drifting: dict[str, str] = {}
        """Version -> id of the window that opened its current drift episode."""
        self.prior = LabelPrior()
        """The true classes' recent frequencies (the estimate's class-mix bound)."""
        self.selector = LabelSelector()
        """Each camera's label-request candidates of its current minute."""
        self._dirty: set[str] = set()

    # --- state --------------------------------------------------------------------------

    def take_dirty(self) -> dict[str, dict[str, Any]]:
        """The state documents changed since the last call, by key."""
        out = {k: self.dump(k) for k in sorted(self._dirty)}
        self._dirty.clear()
        return out

    def dump(self, key: str) -> dict[str, Any]:
        """The JSON document stored under ``key``."""
        kind, _, name = key.partition("/")
        if kind == "book":
            return self.books[name].model_dump(mode="json")
        if kind == "pair":
            return self.pairs[name].model_dump(mode="json")
        if kind == "selection":
            return self.selector.model_dump(mode="json")
        if kind == "control":
            return {
                "trigger": self.trigger.state(),
                "drifting": dict(self.drifting),
                "prior": dict(sorted(self.prior.counts.items())),
            }
        raise KeyError(key)

    def load(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Continue from documents written by ``take_dirty`` of an earlier monitor."""
        for key, doc in items:
            kind, _, name = key.partition("/")
            if kind == "book":
                self.books[name] = WindowBook.model_validate(doc)
            elif kind == "pair":
                self.pairs[name] = PairCounts.model_validate(doc)
            elif kind == "selection":
                self.selector = LabelSelector.model_validate(doc)
            elif kind == "control":
                self.trigger.restore(doc.get("trigger", {}))
                self.drifting = {str(k): str(v) for k, v in doc.get("drifting", {}).items()}
                self.prior = LabelPrior(counts=doc.get("prior", {}))

    def _book(self, version: str, stream: Stream) -> tuple[str, WindowBook]:
        name = f"{version}:{stream}"
        book = self.books.get(name)
        if book is None:
            book = self.books[name] = WindowBook(
                model_name=self.model_name, model_version=version, stream=stream
            )
            # A version promoted after shadowing meets the same frames live: the corrections
            # its shadow labels taught carry over to its first live window.
            shadowed = self.books.get(f"{version}:shadow")
            if stream == "live" and shadowed is not None:
                book.bias = shadowed.bias.model_copy(deep=True)
        self._dirty.add(f"book/{name}")
        return name, book

    # --- intake -------------------------------------------------------------------------

    def on_prediction(
        self, obs: Observation, version: str, stream: Stream, now: datetime
    ) -> Outputs:
        _, book = self._book(version, stream)
        chance = book.add_prediction(obs, now, self.policy.window)
        if stream != "live":
            return Outputs()
        out = self._asked(
            self.selector.on_prediction(
                obs.frame_id,
                obs.camera_id,
                obs.chance_correct,
                obs.served_at,
                self.policy.requests,
            )
        )
        full = book.block.add(
            obs.camera_id,
            obs.predicted,
            chance,
            obs.served_at,
            self.policy.trigger.estimate_frames,
        )
        if full is not None:
            out.extend(self._estimated(version, full, now))
        return out

    def on_disagreement(
        self, obs: Observation, champion: str, challenger: str, challenger_predicted: str
    ) -> Outputs:
        """Champion and challenger predicted different classes for a frame not yet labelled."""
        return self._asked(
            self.selector.on_disagreement(
                obs.frame_id,
                obs.camera_id,
                obs.served_at,
                f"disagreement: champion {champion} says {obs.predicted}, challenger "
                f"{challenger} says {challenger_predicted}",
                self.policy.requests,
            )
        )

    def _asked(self, picks: list[Pick]) -> Outputs:
        if self.policy.requests.per_camera_minute:
            self._dirty.add("selection/")
        return Outputs(
            label_requests=[
                LabelRequest(
                    event_id=derived_id("label-request", p.frame_id),
                    source=SOURCE,
                    frame_id=p.frame_id,
                    camera_id=p.camera_id,
                    reason=p.reason,
                    confidence=p.confidence,
                )
                for p in picks
            ]
        )

    def on_label(self, obs: Observation, version: str, stream: Stream, now: datetime) -> Outputs:
        _, book = self._book(version, stream)
        out = Outputs()
        if stream == "live" and obs.label is not None:
            if not obs.requested:  # the class prior needs a random sample of the frames
                self.prior.add(obs.label, self.policy.window.estimate.prior_half_life)
            judgement = self.trigger.observe_label(
                version,
                obs.served_at,
                obs.predicted == obs.label,
                now,
                (f"camera={obs.camera_id}", f"condition={obs.condition or 'unknown'}"),
            )
            if judgement is not None:
                out.extend(self._judged(judgement))
            suspicion = self.trigger.watch_label(version, obs.served_at, obs.predicted == obs.label)
            if suspicion is not None:
                out.extend(self._suspected(suspicion))
            self._dirty.add("control/")
        closed = book.add_label(obs, now, self.policy.window, self.classes, self.prior)
        if closed:
            out.extend(self._closed(book, closed, now))
        return out

    def on_pair(
        self,
        champion: str,
        challenger: str,
        *,
        champion_correct: bool,
        challenger_correct: bool,
        at: datetime,
    ) -> Outputs:
        name = f"{champion}:{challenger}"
        pair = self.pairs.get(name)
        if pair is None:
            pair = self.pairs[name] = PairCounts(
                champion=champion, challenger=challenger, since=at, until=at
            )
        pair.labelled += 1
        pair.champion_correct += int(champion_correct)
        pair.challenger_correct += int(challenger_correct)
        discordant = champion_correct != challenger_correct
        if discordant:
            pair.champion_only += int(champion_correct)
            pair.challenger_only += int(challenger_correct)
        pair.until = max(pair.until, at)
        self._dirty.add(f"pair/{name}")
        out = Outputs()
        early = discordant and pair.labelled <= self.policy.compare_early
        if early or pair.labelled % self.policy.compare_every == 0:
            out.comparisons.append(self._comparison(pair))
        return out

    def tick(self, now: datetime) -> Outputs:
        """Close every window that is due by time."""
        out = Outputs()
        for name, book in list(self.books.items()):
            closed = book.tick(now, self.policy.window, self.classes, self.prior)
            if closed is not None:
                self._dirty.add(f"book/{name}")
                out.extend(self._closed(book, closed, now))
        return out

    # --- decisions ----------------------------------------------------------------------

    def _estimated(self, version: str, full: FullBlock, now: datetime) -> Outputs:
        """A full estimate block of the champion: the request it fires, if any."""
        ep, threshold = self.policy.window.estimate, self.policy.trigger.threshold
        estimate = full.total.estimate(self.classes, self.prior, ep)
        self._dirty.add("control/")
        if estimate is None:
            return Outputs()
        slices = []
        for cam, acc in sorted(full.cameras.items()):
            e = acc.estimate(self.classes, self.prior, ep, camera=True)
            if e is not None and e.value < threshold:
                slices.append(f"camera={cam}")
        suspicion = self.trigger.observe_estimate(
            version, f"{version}:live:{full.block_id}", estimate, full.started_at, slices, now
        )
        if suspicion is None:
            return Outputs()
        return self._suspected(suspicion)

    def _request(self, request: RetrainRequest) -> RetrainRequest:
        return request.model_copy(
            update={"event_id": derived_id("retrain", request.idempotency_key)}
        )

    def _suspected(self, s: Suspicion) -> Outputs:
        """The alert (and, firing at once, the request) of a drop the estimate or the
        labels' CUSUM suspects."""
        e = s.estimate
        out = Outputs()
        if e is None:
            text = (
                f"drop suspected from labels, waiting for fresh ones to confirm: {s.labelled} "
                f"labels of {s.version} at {s.accuracy or 0:.3f} since the CUSUM left zero"
            )
            detail: dict[str, Any] = {"drop": s.drop, "labelled": s.labelled}
            kind = "accuracy_drop_suspected"
        else:
            text = (
                f"estimated accuracy of {s.version} {e.value:.3f} ({e.low:.3f}-{e.high:.3f}) "
                f"on {e.frames} frames, by {e.method}"
            )
            detail = {"drop": s.drop, "estimate": e.model_dump(mode="json"), "slices": s.slices}
            kind = "accuracy_drop_estimated"
            if s.request is not None:
                out.retrains.append(self._request(s.request))
                text = f"retrain requested: {text}"
            else:
                text = f"drop suspected, waiting for labels to confirm: {text}"
        out.alerts.append(
            _alert(
                kind,
                "critical" if s.request is not None else "warning",
                f"drop:{self.model_name}:{s.drop}",
                text,
                s.version,
                detail,
            )
        )
        return out

    def _judged(self, j: Judgement) -> Outputs:
        """The alert saying what labels made of a suspected drop, and the request a
        confirmation fires."""
        verdict = "confirmed" if j.confirmed else "contradicted (false alarm)"
        out = Outputs()
        what = "estimated drop" if j.source == "estimate" else "drop the labels suggested"
        message = (
            f"{what} of {j.version} {verdict} by labels: accuracy {j.accuracy:.3f} on "
            f"{j.labelled} labels"
        )
        if j.request is not None:
            out.retrains.append(self._request(j.request))
            message += "; retrain requested"
        out.alerts.append(
            _alert(
                ("estimate_confirmed" if j.source == "estimate" else "drop_confirmed")
                if j.confirmed
                else "false_alarm",
                "critical" if j.request is not None else "info" if j.confirmed else "warning",
                j.key,
                message,
                j.version,
                {
                    "idempotency_key": j.key,
                    "accuracy": j.accuracy,
                    "labelled": j.labelled,
                    "false_alarms": self.trigger.false_alarms,
                },
            )
        )
        return out

    def _comparison(self, pair: PairCounts) -> LiveComparison:
        n = pair.labelled
        return LiveComparison(
            event_id=derived_id("compare", pair.champion, pair.challenger, str(n)),
            source=SOURCE,
            model_name=self.model_name,
            champion_version=pair.champion,
            challenger_version=pair.challenger,
            labelled=n,
            champion_correct=pair.champion_correct,
            challenger_correct=pair.challenger_correct,
            champion_only=pair.champion_only,
            challenger_only=pair.challenger_only,
            champion_accuracy=pair.champion_correct / n if n else None,
            challenger_accuracy=pair.challenger_correct / n if n else None,
            since=pair.since,
            until=pair.until,
        )

    def _closed(self, book: WindowBook, closed: Closed, now: datetime) -> Outputs:
        m = closed.metrics.model_copy(
            update={"event_id": derived_id("window", self.model_name, closed.metrics.window_id)}
        )
        out = Outputs(windows=[m])
        if book.shadow:
            return out
        request = self.trigger.observe(m, now)
        if request is not None:
            request = request.model_copy(
                update={"event_id": derived_id("retrain", request.idempotency_key)}
            )
            out.retrains.append(request)
            out.alerts.append(
                _alert(
                    "accuracy_drop",
                    "critical",
                    request.idempotency_key,
                    f"retrain requested: {request.reason}",
                    m.model_version,
                    {"idempotency_key": request.idempotency_key, "windows": request.window_ids},
                )
            )
        self._dirty.add("control/")
        out.extend(self._drift(book, closed, m))
        return out

    def _drift(self, book: WindowBook, closed: Closed, m: WindowMetrics) -> Outputs:
        ref = book.reference
        out = Outputs()
        if ref is None or ref.window_id == m.window_id or not ref.complete(self.policy.window):
            return out
        acc = closed.accumulator
        finding = detect_drift(
            samples=m.sample_count,
            psi_value=m.psi,
            mean_confidence=m.mean_confidence,
            reference_confidence=ref.mean_confidence,
            camera_confidence=acc.camera_confidence(),
            reference_camera_confidence=ref.camera_confidence,
            policy=self.policy.drift,
            camera_samples=acc.camera_samples(),
            reference_camera_samples=ref.camera_samples,
        )
        version = m.model_version
        if finding is None:
            if version in self.drifting:
                started = self.drifting.pop(version)
                out.alerts.append(
                    _alert(
                        "drift_cleared",
                        "info",
                        m.window_id,
                        f"inputs of {version} look like its first windows again "
                        f"(drift since window {started})",
                        version,
                        {"window_id": m.window_id},
                    )
                )
            return out
        if version not in self.drifting:
            self.drifting[version] = m.window_id
            out.alerts.append(
                _alert(
                    "drift_detected",
                    "warning",
                    m.window_id,
                    f"input drift for {version} on {', '.join(finding.cameras)}: "
                    + "; ".join(finding.reasons),
                    version,
                    {
                        "window_id": m.window_id,
                        "reference_window_id": ref.window_id,
                        "cameras": list(finding.cameras),
                        "reasons": list(finding.reasons),
                    },
                    camera_id=finding.cameras[0] if len(finding.cameras) == 1 else None,
                )
            )
        out.label_requests += self._label_requests(acc.uncertain, finding.cameras, finding.reasons)
        return out

    def _label_requests(
        self,
        uncertain: dict[str, list[tuple[float, str]]],
        cameras: Sequence[str],
        reasons: Sequence[str],
    ) -> list[LabelRequest]:
        """The least confident frames of ``cameras``, taken in turn per camera."""
        budget = self.policy.drift.label_requests_per_window
        queues = [list(uncertain.get(cam, [])) for cam in cameras]
        picked: list[LabelRequest] = []
        while budget > len(picked) and any(queues):
            for cam, queue in zip(cameras, queues, strict=True):
                if queue and len(picked) < budget:
                    confidence, frame_id = queue.pop(0)
                    picked.append(
                        LabelRequest(
                            event_id=derived_id("label-request", frame_id),
                            source=SOURCE,
                            frame_id=frame_id,
                            camera_id=cam,
                            reason="drift: " + "; ".join(reasons),
                            confidence=confidence,
                        )
                    )
        return picked
