"""bayesal as Label Studio's active-learning engine: an ML backend that predicts with the Laplace
posterior, scores each task by the strategy's utility and applies the closed-form Bayesian update on
every annotation (needs the ``serve`` extra: FastAPI and uvicorn)."""

from .backend import BackendSettings, LabelStudioBackend
from .client import LabelStudioAPIError, LabelStudioClient
from .config import ChoicesConfig, parse_label_config
from .project import SCORE_STRATEGIES
from .push import PredictionPusher

__all__ = [
    "BackendSettings", "LabelStudioBackend", "ChoicesConfig", "parse_label_config", "SCORE_STRATEGIES", "create_app",
    "run", "LabelStudioClient", "LabelStudioAPIError", "PredictionPusher",
]


def create_app(*args, **kwargs):
    """:func:`bayesal.labelstudio.app.create_app` (imported on use: FastAPI is an optional extra)."""
    from .app import create_app as _create

    return _create(*args, **kwargs)


def run(*args, **kwargs):
    """:func:`bayesal.labelstudio.server.run`."""
    from .server import run as _run

    return _run(*args, **kwargs)
