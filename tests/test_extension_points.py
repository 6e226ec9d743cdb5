"""A new strategy or covariance structure is one new file: the packages import every module they hold,
so a module's registration decorator runs without an edit anywhere else."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import bayesal
import bayesal.laplace
import bayesal.strategies


@pytest.mark.parametrize("package", [bayesal.strategies, bayesal.laplace])
def test_every_module_of_the_package_is_imported(package) -> None:
    names = {p.stem for p in Path(package.__file__).parent.glob("*.py") if p.stem != "__init__"}
    assert names and all(f"{package.__name__}.{n}" in sys.modules for n in names)


def test_a_strategy_and_a_structure_in_new_files_are_found_by_name(tmp_path: Path) -> None:
    """Copies of the two packages with one new file each (in a scratch tree, the source stays untouched)."""
    src = Path(bayesal.__file__).parent
    root = tmp_path / "tree"
    root.mkdir()
    shutil.copytree(src, root / "bayesal", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "bayesal" / "strategies" / "gini.py").write_text(textwrap.dedent('''
        from .registration import register_strategy
        from .score import PredictiveScoreStrategy


        @register_strategy("gini")
        class GiniSampling(PredictiveScoreStrategy):
            name = "gini"

            def score_probs(self, probs):
                return 1.0 - probs.square().sum(dim=1)
    '''))
    (root / "bayesal" / "laplace" / "tempered.py").write_text(textwrap.dedent('''
        from .shared import SharedLaplace
        from .structures import register_structure


        @register_structure("tempered")
        class TemperedLaplace(SharedLaplace):
            def _logit_cov_chunk(self, x):
                return 2.0 * super()._logit_cov_chunk(x)
    '''))
    code = textwrap.dedent('''
        import torch
        from bayesal.laplace import LastLayerLaplace
        from bayesal.strategies import make_strategy
        from bayesal.strategies.base import LabeledSet
        x = torch.randn(30, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        y = torch.arange(30) % 3
        post = LastLayerLaplace(prior_precision=1.0, hessian="tempered").fit(x, y)
        res = make_strategy("seq-gini@expected").query(post, x, LabeledSet(x[:0], y[:0]), 3, torch.Generator())
        print(type(post).__name__, len(set(res.indices.tolist())))
    ''')
    out = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["TemperedLaplace", "3"]
