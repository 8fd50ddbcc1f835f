"""Labels as documented (no ``event_type``, no ``event_id``) are read as labels by the faust
services (labelling and monitoring both route through ``read_source``), with an id that a
redelivered record keeps."""

from __future__ import annotations

import pytest

from shared.events import Event, Label, UnknownEventTypeError, decode, encode
from shared.streams import read_source
from shared.topics import Topics

PLAIN = b'{"frame_id":"f-1","label":"car","camera_id":"cam-01","annotator":"me"}'


def test_a_plain_label_is_a_label_forwarded_in_full() -> None:
    event, forwarded = read_source(PLAIN, Topics.LABELS, 2, 17)
    assert isinstance(event, Label)
    assert (event.frame_id, event.label, event.annotator) == ("f-1", "car", "me")
    # What goes on names its type and id: the join decodes it without knowing its topic.
    again = decode(forwarded, Event)
    assert isinstance(again, Label) and again.event_id == event.event_id
    assert again.labelled_at == event.labelled_at


def test_the_same_record_read_twice_keeps_its_id() -> None:
    first, _ = read_source(PLAIN, Topics.LABELS, 2, 17)
    redelivered, _ = read_source(PLAIN, Topics.LABELS, 2, 17)
    other, _ = read_source(PLAIN, Topics.LABELS, 2, 18)
    assert first.event_id == redelivered.event_id != other.event_id


def test_a_complete_record_is_forwarded_as_it_is() -> None:
    label = Label(frame_id="f-2", label="bus")
    data = encode(label)
    event, forwarded = read_source(data, Topics.LABELS, 0, 0)
    assert forwarded is data and event == label


def test_an_unknown_event_type_is_still_refused() -> None:
    with pytest.raises(UnknownEventTypeError):
        read_source(b'{"event_type":"nope","frame_id":"f"}', Topics.LABELS, 0, 0)
