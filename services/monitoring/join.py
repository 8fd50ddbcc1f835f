"""Joining predictions with their late labels, per frame.

For each frame the join keeps, in the monitor's ``pending`` table (JSON, keyed by frame id):
the champion's prediction (``live``), the challenger's (``shadow``), the label, and which
observations it has already passed on. Each arrival passes on what it completes:

- a prediction: ``prediction`` at once (label-free signals need no label);
- a prediction whose label is known, or a label whose predictions are known: ``label``, once
  per stream;
- champion, challenger and label all known: ``pair``, once (the live comparison);
- champion and challenger known, no label yet, and they predicted different classes:
  ``disagreement``, once (a frame worth asking a label for).

A redelivered prediction or label changes nothing, so at-least-once delivery counts each
frame once. The first label of a frame wins; later ones are ignored (the labelling service
is where corrections go into training data). Entries expire ``ttl_s`` after they were first
seen, labelled or not.

Pure: the caller owns the table and the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from services.monitoring.windows import Observation
from shared.events import Label, Prediction

__all__ = ["FrameJoin", "Joined"]

Entry = dict[str, Any]


@dataclass(frozen=True)
class Joined:
    """One observation the join passes on to the windows."""

    kind: Literal["prediction", "label", "pair", "disagreement"]
    model_name: str
    observation: Observation
    """For ``pair``, the champion's observation (with the label)."""
    version: str
    """For ``pair``, the champion's version."""
    stream: Literal["live", "shadow"] = "live"
    challenger: str | None = None
    challenger_correct: bool | None = None
    challenger_predicted: str | None = None
    """For ``disagreement``, the challenger's class."""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model_name": self.model_name,
            "observation": self.observation.to_json(),
            "version": self.version,
            "stream": self.stream,
            "challenger": self.challenger,
            "challenger_correct": self.challenger_correct,
            "challenger_predicted": self.challenger_predicted,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Joined:
        return cls(
            kind=data["kind"],
            model_name=str(data["model_name"]),
            observation=Observation.from_json(data["observation"]),
            version=str(data["version"]),
            stream=data.get("stream", "live"),
            challenger=data.get("challenger"),
            challenger_correct=data.get("challenger_correct"),
            challenger_predicted=data.get("challenger_predicted"),
        )


def _prediction_json(p: Prediction, calibrated: float | None) -> dict[str, Any]:
    return {
        "model_name": p.model_name,
        "version": p.model_version,
        "camera_id": p.camera_id,
        "condition": p.condition,
        "predicted": p.predicted_class,
        "confidence": p.confidence,
        "calibrated": calibrated,
        "served_at": p.served_at.isoformat(),
    }


def _observation(
    frame_id: str, pred: dict[str, Any], label: str | None, requested: bool = False
) -> Observation:
    return Observation(
        frame_id=frame_id,
        camera_id=str(pred["camera_id"]),
        condition=pred.get("condition"),
        predicted=str(pred["predicted"]),
        confidence=float(pred["confidence"]),
        served_at=datetime.fromisoformat(pred["served_at"]),
        label=label,
        calibrated=pred.get("calibrated"),
        requested=requested,
    )


class FrameJoin:
    """The join's rules (see the module docstring)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl = timedelta(seconds=ttl_s)

    def on_prediction(
        self, entry: Entry | None, p: Prediction, now: datetime, calibrated: float | None = None
    ) -> tuple[Entry, list[Joined]]:
        """The frame's new entry and what the prediction completes; ``calibrated`` is its
        calibrated confidence when its version's temperature is known."""
        e: Entry = dict(entry) if entry else {"t": now.isoformat(), "sent": []}
        stream: Literal["live", "shadow"] = "shadow" if p.shadow else "live"
        held = e.get(stream)
        if held is not None and held.get("version") == p.model_version:
            return e, []  # redelivered
        if held is not None:
            # Another version on the same stream (a swap mid-frame): keep the first.
            return e, []
        e[stream] = _prediction_json(p, calibrated)
        out = [
            Joined(
                "prediction",
                p.model_name,
                _observation(p.frame_id, e[stream], None),
                p.model_version,
                stream,
            )
        ]
        out += self._complete(p.frame_id, e)
        out += self._disagreement(p.frame_id, e)
        return e, out

    @staticmethod
    def _disagreement(frame_id: str, e: Entry) -> list[Joined]:
        live, shadow = e.get("live"), e.get("shadow")
        if live is None or shadow is None or e.get("label") is not None:
            return []
        sent: list[str] = list(e.get("sent", []))
        if "disagreement" in sent or live["predicted"] == shadow["predicted"]:
            return []
        e["sent"] = [*sent, "disagreement"]
        return [
            Joined(
                "disagreement",
                str(live["model_name"]),
                _observation(frame_id, live, None),
                str(live["version"]),
                "live",
                challenger=str(shadow["version"]),
                challenger_predicted=str(shadow["predicted"]),
            )
        ]

    def on_label(
        self, entry: Entry | None, label: Label, now: datetime
    ) -> tuple[Entry, list[Joined]]:
        """The frame's new entry and what the label completes."""
        e: Entry = dict(entry) if entry else {"t": now.isoformat(), "sent": []}
        if e.get("label") is not None:
            return e, []
        e["label"] = label.label
        if label.requested:
            e["requested"] = True
        return e, self._complete(label.frame_id, e)

    def _complete(self, frame_id: str, e: Entry) -> list[Joined]:
        label = e.get("label")
        if label is None:
            return []
        sent: list[str] = list(e.get("sent", []))
        requested = bool(e.get("requested", False))
        out = []
        streams: tuple[Literal["live", "shadow"], ...] = ("live", "shadow")
        for stream in streams:
            pred: dict[str, Any] | None = e.get(stream)
            if pred is not None and stream not in sent:
                sent.append(stream)
                out.append(
                    Joined(
                        "label",
                        str(pred["model_name"]),
                        _observation(frame_id, pred, label, requested),
                        str(pred["version"]),
                        stream,
                    )
                )
        live, shadow = e.get("live"), e.get("shadow")
        if live is not None and shadow is not None and "pair" not in sent:
            sent.append("pair")
            out.append(
                Joined(
                    "pair",
                    str(live["model_name"]),
                    _observation(frame_id, live, label, requested),
                    str(live["version"]),
                    "live",
                    challenger=str(shadow["version"]),
                    challenger_correct=shadow["predicted"] == label,
                )
            )
        e["sent"] = sent
        return out

    def due_at(self, entry: Mapping[str, Any]) -> float:
        """When ``entry`` expires (epoch seconds)."""
        return (datetime.fromisoformat(entry["t"]) + self.ttl).timestamp()
