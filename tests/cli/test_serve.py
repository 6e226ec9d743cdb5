"""``bayesal serve``: options, session opening shared with ``bayesal label``, refusals before loading data."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("fastapi")

from bayesal.cli.commands import build_parser, main  # noqa: E402
from bayesal.cli.serve import build_service  # noqa: E402
from bayesal.exceptions import InvalidInputError, SessionExistsError


def parse(argv: list[str]):
    return build_parser().parse_args(["serve", *argv])


def test_new_session_then_resume(tmp_path):
    state = tmp_path / "proj"
    out = io.StringIO()
    svc = build_service(parse(["--dataset", "digits", "--state-dir", str(state), "--seed", "4"]), out)
    assert "new session in" in out.getvalue()
    assert svc.name == "digits" and svc.info()["has_test"]
    assert svc.session.config["reselect"] == {"schedule": "doubling", "base": 10}  # serve's default schedule
    card = svc.next_item("t")
    svc.answer(card["index"], "7", "t")
    svc.close()
    out = io.StringIO()
    again = build_service(parse(["--resume", str(state)]), out)
    try:
        assert "resumed session" in out.getvalue()
        assert again.session.labels == {card["index"]: 7}
        assert again.session.seed == 4
    finally:
        again.close()
    # the directory holds a session now: a new one there is refused, as by `bayesal label`
    with pytest.raises(SessionExistsError, match="already holds a labeling session"):
        build_service(parse(["--dataset", "digits", "--state-dir", str(state)]), io.StringIO())
    with pytest.raises(InvalidInputError, match="is a session on dataset 'digits'"):
        build_service(parse(["--resume", str(state), "--dataset", "bbcnews"]), io.StringIO())


def test_refusals_come_before_loading_data(tmp_path, capsys):
    assert main(["serve", "--dataset", "digits", "--host", "0.0.0.0", "--token", "short",
                 "--state-dir", str(tmp_path / "x")]) == 2
    assert "at least 8 characters" in capsys.readouterr().err
    assert main(["serve", "--dataset", "digits", "--port", "0", "--state-dir", str(tmp_path / "y")]) == 2
    assert "--port" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    for opt in ("--dataset", "--resume", "--recover", "--host", "--token", "--item-column", "--lease-seconds",
                "--reselect-base", "--no-reselect"):
        assert opt in text
