"""``streamloop shapes``: the ten-class image set a task of one's own starts from."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.fitting import fit_image
from shared.settings import TaskSettings
from streamloop.cli import main
from streamloop.shapes import CLASSES, MAX_SIDE, MIN_SIDE, classes_env, draw, write_set


def digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_ten_distinct_classes_that_the_task_setting_takes_from_the_printed_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert len(CLASSES) == len(set(CLASSES)) == 10
    monkeypatch.setenv("STREAMLOOP_TASK_CLASSES", classes_env())
    assert TaskSettings().classes == CLASSES


def test_the_set_has_every_class_equally_in_a_shuffled_order_with_labels_for_every_file(
    tmp_path: Path,
) -> None:
    written = write_set(tmp_path, 6, seed=3)
    rows = list(csv.reader(written.labels.open()))
    assert rows[0] == ["file", "label"]
    labels = dict(rows[1:])
    files = sorted(p.name for p in written.images.iterdir())
    assert sorted(labels) == files and len(files) == 60
    assert Counter(labels.values()) == {c: 6 for c in CLASSES}
    assert written.per_class == {c: 6 for c in CLASSES}
    # Published in name order, the classes interleave: no run of one class fills the start.
    first = [labels[f] for f in files[:20]]
    assert len(set(first)) >= 5, first
    assert not any(c in f for f in files for c in CLASSES), "the class is not in the name"


def test_images_come_in_assorted_sizes_and_formats_that_open(tmp_path: Path) -> None:
    written = write_set(tmp_path, 10, seed=1)
    sizes, formats = set(), Counter()
    for p in written.images.iterdir():
        with Image.open(p) as im:
            assert im.mode == "RGB"
            sizes.add(im.size)
            formats[im.format] += 1
    assert all(MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE for w, h in sizes)
    assert len(sizes) > 50, "not all of one size"
    assert any(w != h for w, h in sizes) and any(w == h for w, h in sizes)
    assert set(formats) == {"PNG", "JPEG"} and formats["PNG"] > formats["JPEG"]


def test_the_same_seed_writes_the_same_bytes_and_another_seed_other_images(
    tmp_path: Path,
) -> None:
    write_set(tmp_path / "a", 3, seed=9)
    write_set(tmp_path / "b", 3, seed=9)
    write_set(tmp_path / "c", 3, seed=10)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_every_class_draws_a_shape_that_stands_out_from_its_background() -> None:
    rng = np.random.default_rng(0)
    for label in CLASSES:
        for _ in range(5):
            px = draw(label, rng)
            assert px.dtype == np.uint8 and px.ndim == 3 and px.shape[2] == 3
            brightness = px.astype(np.float64).mean(axis=2)
            # Two colours apart by at least 90 grey levels, blurred by noise of 8.
            assert brightness.max() - brightness.min() > 80, label


def test_classes_stay_apart_once_fitted_to_a_small_input() -> None:
    """A nearest-mean check on the 48x48 letterboxed pixels: the set is not noise."""
    rng = np.random.default_rng(4)

    def shape_mask(label: str) -> np.ndarray:
        px = fit_image(draw(label, rng), (48, 48), "letterbox").astype(np.float64)
        grey = px.mean(axis=2)
        inside = grey[grey > 0]  # letterbox bars are black
        # The shape is the colour less common than the background.
        centre = np.median(inside)
        return (np.abs(grey - centre) > 45).astype(np.float64)

    means = {c: np.mean([shape_mask(c) for _ in range(30)], axis=0) for c in CLASSES}
    flat = {c: m.ravel() for c, m in means.items()}
    for a in CLASSES:
        for b in CLASSES:
            if a < b:
                assert np.abs(flat[a] - flat[b]).sum() > 5, (a, b)


def test_write_set_refuses_an_empty_class(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_set(tmp_path, 0)
    with pytest.raises(KeyError):
        draw("car", np.random.default_rng(0))


def test_the_command_writes_the_set_and_prints_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["shapes", str(tmp_path / "set"), "--per-class", "2", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert "wrote 20 images of 10 classes" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("export "))
    assert json.loads(line.split("=", 1)[1].strip("'")) == list(CLASSES)
    assert len(list((tmp_path / "set/images").iterdir())) == 20
