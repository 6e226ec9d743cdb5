"""``bayesal label --audit-rate --stop-when-gain-below``: the estimate line, the audit labels in the log
and ``stop.json``, end to end with oracle answers on digits."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from bayesal.cli.label import add_label_arguments, label_main
from bayesal.cli.serve import add_serve_arguments
from bayesal.labeling.session import Session
from bayesal.labeling.signals import DEFAULT_STOP_GAIN
from bayesal.labeling.storage import LOG_NAME, read_log


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_label_arguments(p)
    return p.parse_args(argv)


def test_audit_rate_and_stop_flags_end_to_end(tmp_path: Path) -> None:
    state = tmp_path / "run"
    out = io.StringIO()
    args = parse(["--dataset", "digits", "--state-dir", str(state), "--oracle", "--max-labels", "60", "--epochs", "5",
                  "--candidate-size", "200", "--audit-rate", "0.3", "--stop-when-gain-below", "5"])
    assert label_main(args, stdin=io.StringIO(""), stdout=out) == 0
    text = out.getvalue()
    lines = [ln for ln in text.splitlines() if ln.startswith("accuracy on the unlabeled pool")]
    assert lines and "audit labels" in lines[-1] and "90% interval" in lines[-1]
    assert "n/a until 50 labels" in lines[0]  # no gain before the window
    assert lines[-1].endswith("< 5: stop recommended")  # a threshold above any gain: stop once it is known
    events = read_log(state / LOG_NAME).records[1:]
    audit = [e for e in events if e.get("audit")]
    assert 6 <= len(audit) <= 35 and all(0 <= e["audit_p"] <= 1 for e in audit)
    assert read_log(state / LOG_NAME).records[0]["audit_rate"] == 0.3
    body = json.loads((state / "stop.json").read_text())
    est = body["estimate"]
    assert est["n_labels"] == 60 and est["stop"] is True and est["stop_threshold"] == 5.0
    assert est["method"] == "audit" and est["n_audit"] == len(audit) and 0 <= est["low"] <= est["accuracy"] <= est["high"] <= 1
    # a resume keeps the saved audit rate and the audit labels
    from bayesal.data import load_dataset

    s = Session.resume(state, load_dataset("digits").train_features, fsync=False)
    assert s.audit_rate == 0.3 and len(s.audit_labels()) == len(audit)
    s.close()


def test_stop_flags_are_checked_and_shared_with_serve() -> None:
    with pytest.raises(SystemExit):
        parse(["--audit-rate", "1.0"])
    with pytest.raises(SystemExit):
        parse(["--stop-when-gain-below", "-1"])
    p = argparse.ArgumentParser()
    add_serve_arguments(p)
    args = p.parse_args(["--audit-rate", "0.1", "--stop-when-gain-below", "0.01"])
    assert args.audit_rate == 0.1 and args.stop_when_gain_below == 0.01
    assert parse([]).audit_rate == 0.0 and parse([]).stop_when_gain_below == DEFAULT_STOP_GAIN == 0.02
