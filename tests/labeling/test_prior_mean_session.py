"""A session whose head's prior has a mean (a zero-shot head): it guesses before the first label, every
fit is centred on it, and a resume, a replay or an added class keep it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bayesal.exceptions import CorruptStateError, InvalidInputError
from bayesal.labeling import Session
from bayesal.labeling.storage import LOG_NAME, STATE_NAME, LabelLog, read_log
from bayesal.laplace import LastLayerLaplace


@pytest.fixture(scope="module")
def pool(clustered_pool):
    x, y, centers, _ = clustered_pool(n=150, c=3)
    x = torch.as_tensor(x, dtype=torch.float64)
    m0 = torch.as_tensor(centers, dtype=torch.float64)  # a guess that points at each class's centre
    return x, torch.as_tensor(y), m0


def test_the_first_prediction_is_the_prior_means_guess_and_fits_stay_centred_on_it(tmp_path: Path, pool) -> None:
    x, y, m0 = pool
    with Session(x, ["a", "b", "c"], prior_mean=m0, random_state=0, background=False, state_dir=tmp_path / "s",
                 reselect="doubling") as s:
        assert s.has_prior_mean and s.n_labeled == 0
        torch.testing.assert_close(s.posterior.mean, m0)
        guess = s.predict_proba(range(len(x))).argmax(1)
        torch.testing.assert_close(guess, (x @ m0.T).argmax(1), rtol=0, atol=0)
        assert float((guess == y).double().mean()) > 0.8  # the guess is worth something before any label
        for i in range(12):  # past the refit at 10 labels
            s.tell(i, int(y[i]))
        torch.testing.assert_close(s.posterior.prior_mean, m0)
        probs = s.predict_proba([20, 21, 22])
    header = read_log(tmp_path / "s" / LOG_NAME).records[0]
    torch.testing.assert_close(torch.tensor(header["prior_mean"], dtype=torch.float64), m0, rtol=0, atol=0)
    with Session.resume(tmp_path / "s", x, background=False) as again:  # from the snapshot
        torch.testing.assert_close(again.predict_proba([20, 21, 22]), probs)
    (tmp_path / "s" / STATE_NAME).unlink()
    with Session.resume(tmp_path / "s", x, background=False) as replayed:  # from the log alone
        torch.testing.assert_close(replayed.predict_proba([20, 21, 22]), probs)
        torch.testing.assert_close(replayed.posterior.prior_mean, m0)


def test_without_a_prior_mean_nothing_changes(pool) -> None:
    x, _, _ = pool
    s = Session(x, ["a", "b", "c"], random_state=0, background=False)
    assert not s.has_prior_mean
    torch.testing.assert_close(s.predict_proba([0])[0], torch.full((3,), 1 / 3, dtype=torch.float64))
    assert s.posterior.prior_mean is None


def test_an_added_class_gains_a_row_of_the_prior_mean(tmp_path: Path, pool) -> None:
    x, y, m0 = pool
    with Session(x, ["a", "b", "c"], prior_mean=m0, random_state=0, background=False, state_dir=tmp_path / "s") as s:
        s.tell(0, int(y[0]))
        s.add_class("d")
        torch.testing.assert_close(s.posterior.prior_mean[:3], m0)
        torch.testing.assert_close(s.posterior.prior_mean[3], torch.zeros(x.shape[1], dtype=torch.float64))
        row = np.ones(x.shape[1])
        s.add_class("e", prior_row=row)
        torch.testing.assert_close(s.posterior.prior_mean[4], torch.ones(x.shape[1], dtype=torch.float64))
        with pytest.raises(InvalidInputError, match="finite numbers"):
            s.add_class("f", prior_row=[1.0])
        assert s.class_names == ["a", "b", "c", "d", "e"]


def test_a_bad_prior_mean_is_refused_and_a_damaged_one_is_corrupt(tmp_path: Path, pool) -> None:
    x, _, m0 = pool
    with pytest.raises(InvalidInputError, match="shape"):
        Session(x, ["a", "b"], prior_mean=m0)
    with pytest.raises(InvalidInputError, match="NaN"):
        Session(x, ["a", "b", "c"], prior_mean=m0 * float("nan"))
    Session(x, ["a", "b", "c"], prior_mean=m0, random_state=0, state_dir=tmp_path / "s").close()
    log = tmp_path / "s" / LOG_NAME
    records = read_log(log).records
    header = dict(records[0])
    header["prior_mean"] = header["prior_mean"][:2]
    LabelLog.rewrite(log, [header, *records[1:]], fsync=False).close()
    (tmp_path / "s" / STATE_NAME).unlink()
    with pytest.raises(CorruptStateError):
        Session.resume(tmp_path / "s", x)


def test_the_posterior_file_of_a_session_keeps_the_prior_mean(pool) -> None:
    x, y, m0 = pool
    s = Session(x, ["a", "b", "c"], prior_mean=m0, random_state=0, background=False)
    s.tell(0, int(y[0]))
    back = LastLayerLaplace.from_state_dict(s.posterior.state_dict())
    torch.testing.assert_close(back.prior_mean, m0)
