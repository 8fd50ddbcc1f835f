"""``streamloop publish --labels``: which CSV row labels which image file."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamloop.cli import _image_files, _read_labels, label_keys, match_labels


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``data/train/{cat,dog}/N.png`` and CSVs beside them, with ``tmp_path`` as the cwd."""
    monkeypatch.chdir(tmp_path)
    for cls in ("cat", "dog"):
        folder = tmp_path / "data" / "train" / cls
        folder.mkdir(parents=True)
        for i in range(2):
            (folder / f"{i}.png").write_bytes(b"not decoded here")
    return tmp_path


def publish(paths: list[str], csv_path: str) -> tuple[dict[str, str], list[str]]:
    files = _image_files(paths)
    folders = [Path(p) for p in paths if Path(p).is_dir()]
    found, unmatched = match_labels(files, _read_labels(csv_path), folders, Path(csv_path).parent)
    return {p.as_posix(): label for p, label in found.items()}, unmatched


def test_paths_from_the_csvs_folder_label_files_in_subfolders(tree: Path) -> None:
    # The usual layout of a labelled set: the CSV at the top, paths below it.
    (tree / "data/labels.csv").write_text(
        "file,label\ntrain/cat/0.png,cat\n./train/cat/1.png,cat\ntrain/dog/0.png,dog\n"
    )
    found, unmatched = publish(["data/train"], "data/labels.csv")
    assert found == {
        "data/train/cat/0.png": "cat",
        "data/train/cat/1.png": "cat",
        "data/train/dog/0.png": "dog",
    }
    assert unmatched == []
    # One class's folder alone: the other rows name files not published.
    found, unmatched = publish(["data/train/cat"], "data/labels.csv")
    assert set(found) == {"data/train/cat/0.png", "data/train/cat/1.png"}
    assert unmatched == ["train/dog/0.png"]


def test_paths_from_the_published_folder_and_bare_names_still_label(tree: Path) -> None:
    (tree / "elsewhere.csv").write_text("cat/0.png,cat\n1.png,dog\n")
    found, unmatched = publish(["data/train"], "elsewhere.csv")
    # ``1.png`` is the name of two files: both get the row's label, as before.
    assert found == {
        "data/train/cat/0.png": "cat",
        "data/train/cat/1.png": "dog",
        "data/train/dog/1.png": "dog",
    }
    assert unmatched == []


def test_the_path_as_given_wins_over_a_bare_name(tree: Path) -> None:
    (tree / "l.csv").write_text("data/train/cat/0.png,cat\n0.png,dog\n")
    found, _ = publish(["data/train"], "l.csv")
    assert found["data/train/cat/0.png"] == "cat"
    assert found["data/train/dog/0.png"] == "dog"


def test_rows_naming_no_published_file_are_reported_in_csv_order(tree: Path) -> None:
    (tree / "l.csv").write_text("file,label\ncat/9.png,cat\ncat/0.png,cat\nnope.png,dog\n")
    found, unmatched = publish(["data/train"], "l.csv")
    assert found == {"data/train/cat/0.png": "cat"}
    assert unmatched == ["cat/9.png", "nope.png"]


def test_label_keys_are_unique_and_most_specific_first(tree: Path) -> None:
    path = Path("data/train/cat/0.png")
    keys = label_keys(path, [Path("data/train"), Path("data/train/cat")], Path("data"))
    assert keys == ["data/train/cat/0.png", "train/cat/0.png", "cat/0.png", "0.png"]
    assert label_keys(path, [], None) == ["data/train/cat/0.png", "0.png"]
