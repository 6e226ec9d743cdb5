"""Raw items: reading texts and image folders, detecting the text column, classes, the embedding
shards, and the clear error for a features file whose only numbers are ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayesal.data import Backbone, ImageFiles, embed_items, load_features, read_classes, read_items
from bayesal.exceptions import DataFileError, InvalidInputError, MissingFileError

TEXTS = ["the match ended in a draw", "shares fell sharply today", "a new phone was launched", "the minister resigned"]


def test_csv_with_id_text_and_labels(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    pd.DataFrame({"id": ["007", "a", "b", "c"], "text": TEXTS, "label": ["sport", "", "tech", ""]}).to_csv(p, index=False)
    raw = read_items(p, label_column="label")
    assert raw.kind == "text" and raw.ids == ["007", "a", "b", "c"]  # an id stays as written, never a number
    assert raw.texts == TEXTS and raw.labels == ["sport", None, "tech", None]
    assert raw.info["text_column"] == "text" and raw.info["id_column"] == "id"
    assert read_items(p).labels == [None] * 4  # labels only with --label-column


@pytest.mark.parametrize("suffix", [".tsv", ".jsonl", ".parquet"])
def test_other_table_formats(tmp_path: Path, suffix: str) -> None:
    df = pd.DataFrame({"body": TEXTS, "n": [1, 2, 3, 4]})
    p = tmp_path / f"t{suffix}"
    if suffix == ".tsv":
        df.to_csv(p, sep="\t", index=False)
    elif suffix == ".jsonl":
        df.to_json(p, orient="records", lines=True)
    else:
        df.to_parquet(p)
    raw = read_items(p)
    assert raw.texts == TEXTS and raw.ids == ["0", "1", "2", "3"] and raw.info["text_column"] == "body"


def test_text_column_detection(tmp_path: Path) -> None:
    p = tmp_path / "two.csv"
    pd.DataFrame({"title": ["a b", "c d", "e f", "g h"], "summary": TEXTS}).to_csv(p, index=False)
    with pytest.raises(DataFileError, match="several text columns.*--text-column"):
        read_items(p)
    assert read_items(p, text_column="summary").texts == TEXTS
    named = tmp_path / "named.csv"
    pd.DataFrame({"title": ["a b", "c d", "e f", "g h"], "text": TEXTS}).to_csv(named, index=False)
    assert read_items(named).info["text_column"] == "text"  # the one named like a text column
    numbers = tmp_path / "numbers.csv"
    pd.DataFrame({"id": [1, 2], "x": [0.5, 0.7]}).to_csv(numbers, index=False)
    with pytest.raises(DataFileError, match="no column of text"):
        read_items(numbers)
    with pytest.raises(DataFileError, match="'nope' is not a column"):
        read_items(named, text_column="nope")


def test_empty_texts_are_left_out_and_repeated_ids_refused(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    pd.DataFrame({"id": [1, 2, 3], "text": ["one", "", "three"]}).to_csv(p, index=False)
    raw = read_items(p)
    assert raw.ids == ["1", "3"] and raw.texts == ["one", "three"] and raw.info["skipped_empty"] == 1
    pd.DataFrame({"id": [1, 1], "text": ["one", "two"]}).to_csv(p, index=False)
    with pytest.raises(DataFileError, match="repeats an id"):
        read_items(p)


def test_txt_one_item_per_line(tmp_path: Path) -> None:
    p = tmp_path / "t.txt"
    p.write_text("first item\n\n  second item  \n")
    raw = read_items(p)
    assert raw.texts == ["first item", "second item"] and raw.ids == ["1", "3"]  # ids: line numbers
    with pytest.raises(InvalidInputError, match="no columns"):
        read_items(p, text_column="text")


def _write_images(root: Path, layout: dict[str, int], side: int = 20) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder, n in layout.items():
        d = root / folder if folder else root
        d.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            Image.fromarray(rng.integers(0, 255, (side, side + 4, 3), dtype=np.uint8)).save(d / f"im{k}.png")


def test_image_folder_recursive_with_class_subfolders(tmp_path: Path) -> None:
    _write_images(tmp_path / "imgs", {"cat": 2, "dog": 1, "": 2, "misc/deeper": 1})
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    raw = read_items(tmp_path / "imgs", classes=["cat", "dog"])
    assert raw.kind == "image"
    assert raw.ids == ["cat/im0.png", "cat/im1.png", "dog/im0.png", "im0.png", "im1.png", "misc/deeper/im0.png"]
    assert raw.labels == ["cat", "cat", "dog", None, None, None]  # a folder that is no class does not label
    assert read_items(tmp_path / "imgs").labels == [None] * 6
    img = raw.display_items()[0]
    assert img.shape == (20, 24, 3) and img.dtype == np.uint8
    assert ImageFiles(raw.paths, size=16)[0:2][1].shape == (16, 16, 3)
    with pytest.raises(InvalidInputError, match="one image; pass the folder"):
        read_items(raw.paths[0])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFileError, match="holds no images"):
        read_items(tmp_path / "empty")
    with pytest.raises(MissingFileError):
        read_items(tmp_path / "missing")


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"not a png")
    raw = read_items(tmp_path)
    with pytest.raises(DataFileError, match="bad.png"):
        raw.display_items()[0]


def test_read_classes(tmp_path: Path) -> None:
    assert read_classes("a, b,c").names == ["a", "b", "c"]
    f = tmp_path / "classes.txt"
    f.write_text("# topics\nsport: games, matches and players\n\ntech\n")
    cl = read_classes(path=f)
    assert cl.names == ["sport", "tech"] and cl.descriptions == ["games, matches and players", None]
    with pytest.raises(InvalidInputError, match="more than once"):
        read_classes("a,b,a")
    with pytest.raises(InvalidInputError, match="empty"):
        read_classes("a,,b")
    with pytest.raises(InvalidInputError, match="not both"):
        read_classes("a,b", f)


class CountingBackbone(Backbone):
    """A deterministic text backbone (character statistics) that counts what it encodes."""

    name = "counting"
    dim = 3

    def __init__(self) -> None:
        self.encoded = 0

    def encode(self, items, batch_size=64, progress=True) -> np.ndarray:
        self.encoded += len(items)
        return np.array([[len(t), t.count(" "), sum(map(ord, t)) % 97] for t in items], dtype=np.float32)


def test_embedding_shards_are_reused_and_redone_when_the_items_change(tmp_path: Path) -> None:
    p = tmp_path / "t.txt"
    p.write_text("\n".join(TEXTS))
    bb = CountingBackbone()
    first = embed_items(read_items(p), bb, tmp_path / "emb", progress=False, shard_rows=3)
    assert first.shape == (4, 3) and bb.encoded == 4
    again = embed_items(read_items(p), bb, tmp_path / "emb", progress=False, shard_rows=3)
    assert bb.encoded == 4 and np.array_equal(first, again)  # read from the shards
    p.write_text("\n".join(TEXTS[:3] + ["a changed line"]))
    changed = embed_items(read_items(p), bb, tmp_path / "emb", progress=False, shard_rows=3)
    assert bb.encoded == 8 and not np.array_equal(first, changed)
    assert len(list((tmp_path / "emb").iterdir())) == 1  # the old version's shards are gone
    manifest = json.loads(next((tmp_path / "emb").iterdir()).joinpath("manifest.json").read_text())
    assert manifest["n_items"] == 4


def test_features_file_with_only_an_id_says_how_to_label_it(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    pd.DataFrame({"id": [1, 2, 3, 4], "text": TEXTS, "label": ["a", "b", "a", "b"]}).to_csv(p, index=False)
    with pytest.raises(DataFileError, match=r"only numeric column\(s\) \['id'\] are ids.*--items"):
        load_features(p)
    text_only = tmp_path / "texts.csv"
    pd.DataFrame({"text": TEXTS, "label": ["a", "b", "a", "b"]}).to_csv(text_only, index=False)
    with pytest.raises(DataFileError, match=r"no numeric feature columns.*\['text'\] hold text.*--items"):
        load_features(text_only)


def test_id_column_is_never_a_feature(tmp_path: Path) -> None:
    p = tmp_path / "f.csv"
    pd.DataFrame({"doc_id": [10, 11, 12, 13], "f1": [0.1, 0.2, 0.3, 0.4], "label": ["a", "b", "a", "b"]}).to_csv(p, index=False)
    with pytest.warns(UserWarning, match="ignoring id column"):
        ds = load_features(p, test_size=0)
    assert ds.meta["feature_columns"] == ["f1"] and ds.train_features.shape == (4, 1)


class PixelBackbone(Backbone):
    """A deterministic image backbone (mean colour) that counts what it encodes."""

    name = "pixels"
    dim = 3
    resolution = 8

    def __init__(self) -> None:
        self.encoded = 0

    def encode(self, items, batch_size=64, progress=True) -> np.ndarray:
        self.encoded += len(items)
        return np.array([np.asarray(im, dtype=np.float32).mean(axis=(0, 1)) for im in items], dtype=np.float32)


def test_image_thumbnails_are_made_once_with_the_features(tmp_path: Path) -> None:
    from bayesal.data import thumbnail_png

    _write_images(tmp_path / "imgs", {"": 3})
    raw = read_items(tmp_path / "imgs")
    bb = PixelBackbone()
    feats = embed_items(raw, bb, tmp_path / "emb", progress=False)
    assert feats.shape == (3, 3) and raw.thumbnails is not None and raw.thumbnails.parent == tmp_path / "emb"
    files = sorted(raw.thumbnails.glob("*.png"))
    assert len(files) == 3  # made with the features, one per image
    store = raw.display_items().thumbnail_store()
    assert store.png(1) == thumbnail_png(raw.display_items()[1])
    # opened again: the features and the thumbnails are read, nothing is made
    stamps = [f.stat().st_mtime_ns for f in files]
    again = read_items(tmp_path / "imgs")
    embed_items(again, bb, tmp_path / "emb", progress=False)
    assert bb.encoded == 3 and again.thumbnails == raw.thumbnails
    assert [f.stat().st_mtime_ns for f in sorted(raw.thumbnails.glob("*.png"))] == stamps
    # a changed image: new content, a new thumbnail folder, the old one removed
    (tmp_path / "imgs" / "im0.png").write_bytes((tmp_path / "imgs" / "im1.png").read_bytes())
    changed = read_items(tmp_path / "imgs")
    embed_items(changed, bb, tmp_path / "emb", progress=False)
    assert changed.thumbnails != raw.thumbnails and not raw.thumbnails.exists()
    assert len(list(changed.thumbnails.glob("*.png"))) == 3
