"""One labeling engine behind a labeling Session and a Label Studio project: the same answers, folded
by each, give the same posterior — live, after a refit, and after both are reopened from their files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bayesal.labeling import Session
from bayesal.labelstudio.config import parse_label_config
from bayesal.labelstudio.project import SNAPSHOT_NAME, ProjectModel
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
    return Session(X, list(CLASSES), state_dir=path, posterior_config=pcfg, gamma=gamma, head_config=HeadConfig(),
                   random_state=0, candidate_size=None, fsync=False)


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
