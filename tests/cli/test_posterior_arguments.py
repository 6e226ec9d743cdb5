"""The posterior's options are the same flags, with the same checks, on every command that builds one."""

import argparse

import pytest

from bayesal.cli.arguments import Parser, add_posterior_arguments, posterior_options_from
from bayesal.cli.commands import _config, build_parser
from bayesal.cli.label import add_label_arguments
from bayesal.cli.labelstudio import add_labelstudio_arguments
from bayesal.cli.serve import add_serve_arguments
from bayesal.laplace import HeadConfig, PosteriorOptions

POSTERIOR_FLAGS = {"--paper", "--prior-precision", "--gamma", "--steps", "--curvature", "--hessian", "--lambda-mf",
                   "--head-solver", "--epochs"}


def _parser(add) -> argparse.ArgumentParser:
    p = Parser(prog="bayesal test")
    add(p)
    return p


def _run_parser() -> argparse.ArgumentParser:
    return build_parser()._subparsers._group_actions[0].choices["run"]  # noqa: SLF001 - the real sub-parser


PARSERS = {
    "run": _run_parser,
    "label": lambda: _parser(add_label_arguments),
    "serve": lambda: _parser(add_serve_arguments),
    "labelstudio": lambda: _parser(add_labelstudio_arguments),
}


def _posterior_actions(parser: argparse.ArgumentParser) -> dict[str, tuple]:
    out = {}
    for action in parser._actions:  # noqa: SLF001 - what argparse knows about each flag
        for flag in action.option_strings:
            if flag in POSTERIOR_FLAGS:
                out[flag] = (action.type, action.choices, action.default, type(action).__name__)
    return out


def test_every_command_has_the_same_posterior_flags():
    actions = {name: _posterior_actions(make()) for name, make in PARSERS.items()}
    assert all(set(a) == POSTERIOR_FLAGS for a in actions.values())
    assert len({repr(sorted(a.items())) for a in actions.values()}) == 1


@pytest.mark.parametrize("name", sorted(PARSERS))
@pytest.mark.parametrize("bad", [["--gamma", "0"], ["--gamma", "nan"], ["--steps", "0"], ["--lambda-mf", "-1"],
                                 ["--prior-precision", "-2"], ["--prior-precision", "cvv"], ["--curvature", "x"],
                                 ["--head-solver", "sgd"], ["--epochs", "-1"]])
def test_bad_values_are_refused_while_parsing(name, bad, capsys):
    parser = PARSERS[name]()
    extra = ["--state-dir", "s"] if name == "labelstudio" else ["--strategy", "random"] if name == "run" else []
    with pytest.raises(SystemExit):
        parser.parse_args(extra + bad)
    assert bad[0] in capsys.readouterr().err


def test_options_from_the_flags():
    parser = _parser(add_posterior_arguments)
    assert posterior_options_from(parser.parse_args([])) == PosteriorOptions()
    assert posterior_options_from(parser.parse_args(["--paper"])) == PosteriorOptions.paper()
    args = parser.parse_args(["--paper", "--gamma", "3", "--epochs", "7", "--prior-precision", "evidence"])
    assert posterior_options_from(args) == PosteriorOptions.paper(
        gamma=3.0, head=HeadConfig.paper(epochs=7), prior_precision="evidence")
    args = parser.parse_args(["--steps", "2", "--curvature", "gaussian", "--hessian", "full", "--lambda-mf", "0.5",
                              "--head-solver", "radam", "--prior-precision", "2.5"])
    assert posterior_options_from(args) == PosteriorOptions(
        steps=2, curvature="gaussian", hessian="full", lambda_mf=0.5, head=HeadConfig(solver="radam"),
        prior_precision=2.5)
    base = PosteriorOptions(prior_precision=1.0)
    assert posterior_options_from(parser.parse_args(["--gamma", "2"]), base) == base.replace(gamma=2.0)


def test_run_builds_its_config_from_the_flags():
    args = _run_parser().parse_args(["--strategy", "random", "--paper", "--batch-size", "4"])
    cfg = _config(args)
    assert cfg.posterior == PosteriorOptions.paper() and cfg.batch_size == 4
    assert _config(_run_parser().parse_args(["--strategy", "random"])).posterior == PosteriorOptions()


def test_labelstudio_keeps_its_fixed_prior_unless_told_to_choose_it(tmp_path):
    from bayesal.labelstudio import BackendSettings

    args = PARSERS["labelstudio"]().parse_args(["--state-dir", str(tmp_path)])
    assert posterior_options_from(args, BackendSettings().posterior) == PosteriorOptions(prior_precision=1.0)
    args = PARSERS["labelstudio"]().parse_args(["--state-dir", str(tmp_path), "--prior-precision", "cv"])
    chosen = posterior_options_from(args, BackendSettings().posterior)
    assert chosen == PosteriorOptions(prior_precision="cv")
    assert BackendSettings(posterior=chosen).posterior.chooses_prior  # each Start Training chooses λ₀
