"""A full disk (whole or short writes failing at the N-th os.write) and read-only directories for every
write path: a StorageError, the files as before the failed write, and the next write works once space
is back."""

from __future__ import annotations

from families import faults_disk
from faultkit import Tally


def test_disk_full_and_read_only(tmp_path):
    tally = Tally()
    faults_disk(tally, tmp_path, 200)
    assert tally.inputs_tried >= 200 and tally.clear_errors >= 100
    assert tally.bad() == 0, (tally.line(), tally.examples)


def test_disk_full_while_labeling_says_how_to_continue(tmp_path, monkeypatch, capsys):
    import io
    import sys

    import numpy as np
    from faultkit import disk_full_after

    from bayesal.cli.commands import main
    from bayesal.labeling.session import Session

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(60, 3)) + np.eye(3)[np.arange(60) % 3] * 2).astype(np.float32)
    data = tmp_path / "d.npz"
    np.savez(data, features=x, labels=np.arange(60) % 3)
    state = tmp_path / "s"
    monkeypatch.setattr(sys, "stdin", io.StringIO("q\n"))
    assert main(["label", "--dataset", str(data), "--state-dir", str(state), "--epochs", "2"]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("0\n1\n2\n"))
    with disk_full_after(1):  # one label gets through, then the disk is full
        rc = main(["label", "--resume", str(state), "--epochs", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "the disk is full" in err and f"continue with --resume {state}" in err and "1 labels given" in err
    monkeypatch.setattr(sys, "stdin", io.StringIO("2\nq\n"))
    assert main(["label", "--resume", str(state), "--epochs", "2"]) == 0  # space is back
    s = Session.resume(state, _pool(data))
    assert s.n_labeled == 2
    s.close()


def _pool(path):
    from bayesal.data import load_dataset

    return load_dataset(str(path)).train_features
