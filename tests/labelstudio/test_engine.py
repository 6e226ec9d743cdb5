"""One labeling engine behind a labeling Session and a Label Studio project: the same answers, folded
by each, give the same posterior — live, after a refit, and after both are reopened from their files;
and a project folder written before the engine existed reopens as it was."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bayesal.exceptions import StorageError
from bayesal.labeling import Session
from bayesal.labeling.storage import load_snapshot
from bayesal.labelstudio.config import parse_label_config
from bayesal.labelstudio.project import SNAPSHOT_NAME, ProjectModel
from bayesal.laplace import PosteriorOptions
from bayesal.laplace.head import HeadConfig

CLASSES = ("a", "b", "c")
CONFIG = parse_label_config('<View><Text name="t" value="$text"/><Choices name="c" toName="t">'
                            + "".join(f'<Choice value="{c}"/>' for c in CLASSES) + "</Choices></View>")
RNG = np.random.default_rng(3)
X = (RNG.normal(size=(40, 5)) + np.eye(5)[np.arange(40) % 3] * 2).astype(np.float32)
#: (pool index, class) answered in this order; a refit after the 6th
ANSWERS = [(0, 0), (1, 1), (2, 2), (4, 1), (6, 0), (8, 2), (10, 1), (13, 0), (20, 2)]
REFIT_AFTER = 6
UPDATES = {
    "paper": ({"prior_precision": 1.0, "curvature": "gaussian", "steps": 1}, 10.0),
    "default": ({"prior_precision": 2.0}, None),
}


def session(path, update: str) -> Session:
    pcfg, gamma = UPDATES[update]
    options = PosteriorOptions(**pcfg, **({} if gamma is None else {"gamma": gamma}), head=HeadConfig())
    return Session(X, list(CLASSES), state_dir=path, options=options, random_state=0, candidate_size=None, fsync=False,
                   background=False)  # the refit in the call, as a project's train event


def project(path, update: str) -> ProjectModel:
    pcfg, gamma = UPDATES[update]
    return ProjectModel(path, X.shape[1], gamma=gamma, curvature=pcfg.get("curvature"), steps=pcfg.get("steps"),
                        prior_precision=pcfg["prior_precision"], head_config=HeadConfig(), seed=0, fsync=False)


def assert_same(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    for key in ("mean", "bias", "covariance"):
        torch.testing.assert_close(sa[key], sb[key], atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("update", sorted(UPDATES))
def test_a_session_and_a_label_studio_project_fold_the_same_answers_to_the_same_posterior(tmp_path, update):
    s = session(tmp_path / "session", update)
    p = project(tmp_path / "project", update)
    p.set_config(CONFIG)
    assert_same(s.posterior, p.posterior())  # the engine's zero-weight prior
    for k, (i, c) in enumerate(ANSWERS, start=1):
        s.tell(i, c)
        p.annotate(100 + k, i, [CLASSES[c]], X[i])
        assert_same(s.posterior, p.posterior())  # one Bayesian update each
        if k == REFIT_AFTER:  # a head refit on the answers so far (the exact MAP head: no seed involved)
            s.retrain()
            p.train()
            assert_same(s.posterior, p.posterior())
    live_s, live_p = s.posterior, p.posterior()
    s.close()
    p.close()

    # both reopen from their snapshots, and from their logs alone, to the same posterior
    for drop_snapshot in (False, True):
        if drop_snapshot:
            (tmp_path / "session" / "session.state").unlink()
            (tmp_path / "project" / SNAPSHOT_NAME).unlink()
            s = Session.recover(tmp_path / "session", X, fsync=False)
        else:
            s = Session.resume(tmp_path / "session", X, fsync=False)
        p = project(tmp_path / "project", update)
        assert_same(s.posterior, live_s)
        assert_same(p.posterior(), live_p)
        assert_same(s.posterior, p.posterior())
        s.close()
        p.close()


# ----------------------------------------------------------------------------- a folder saved before
SAVED = Path(__file__).with_name("fixtures") / "saved"
#: the features of fixtures/saved/project_v1, a project written by bayesal before the labeling engine
#: (seq-margin, a seeded 5-epoch minibatch head; annotations, a change, a deletion, a train marker, a 2-class one)
X_SAVED = (np.random.default_rng(0).normal(size=(24, 4)) + np.eye(4)[np.arange(24) % 3] * 2).astype(np.float32)


@pytest.mark.parametrize("from_log_only", [False, True])
def test_a_project_saved_before_the_engine_reopens_as_it_was(tmp_path, from_log_only):
    d = Path(shutil.copytree(SAVED / "project_v1", tmp_path / "p"))
    expected = json.loads((SAVED / "project_v1.json").read_text())
    saved = load_snapshot(d / SNAPSHOT_NAME)["posterior"]
    if from_log_only:  # the fold replayed: the prior, the seeded refit and the updates as they were
        (d / SNAPSHOT_NAME).unlink()
    # the settings it was written with: the plain Laplace predictive, Newton updates from the first label
    m = ProjectModel(d, 4, seed=99, fsync=False, strategy="seq-margin", batch_size=3,
                     head_config=HeadConfig(solver="radam", epochs=5, batch_size=2), spread=1.0, exact_until=0)
    try:
        assert m.model_version == expected["model_version"]
        assert m.annotation_ids() == expected["annotation_ids"]
        for key in ("mean", "bias", "covariance"):
            torch.testing.assert_close(m.posterior().state_dict()[key], saved[key], atol=1e-10, rtol=0)
        np.testing.assert_allclose(m.predict(X_SAVED[13:20])[1].numpy(), expected["scores"], atol=1e-9)
    finally:
        m.close()


def test_a_failed_log_write_changes_nothing_and_the_next_webhook_is_written(tmp_path, monkeypatch):
    """A project keeps serving after a failed append (the log is cut back to its last line); a
    session, unlike it, refuses every later action until it is reopened."""
    p = project(tmp_path / "p", "paper")
    p.set_config(CONFIG)
    p.annotate(1, 0, ["a"], X[0])
    version, mean = p.model_version, p.posterior().state_dict()["mean"].clone()
    real_write = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StorageError, match="could not append to the label log"):
        p.annotate(2, 1, ["b"], X[1])
    monkeypatch.setattr(os, "write", real_write)
    assert p.model_version == version and p.annotation_ids() == [1]
    torch.testing.assert_close(p.posterior().state_dict()["mean"], mean)
    assert p.annotate(2, 1, ["b"], X[1])  # space is back: written
    p.close()
    again = project(tmp_path / "p", "paper")
    assert again.annotation_ids() == [1, 2] and again.model_version.endswith("-3")
    again.close()
