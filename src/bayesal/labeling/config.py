"""The saved configuration of a labeling session: the header line of its label log.

The header records what a session needs to be rebuilt from its events: the pool (shape and a hash of
the features), the class names, the seed, the strategy, the posterior options (posterior and head
settings, the update step ``gamma``), the refit policy (``retrain_every`` and ``reselect``, see
:mod:`bayesal.labeling.policy`), ``candidate_size`` and, when the prior has one, its mean ``prior_mean``
(the ``(C, D)`` rows themselves, so a resume or a replay needs no backbone to rebuild it). :func:`new_header`
validates the settings and builds it; :func:`saved_options` reads the options back;
:func:`check_features` tells whether a pool is the one a saved header was made for.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bayesal.exceptions import CorruptStateError, InvalidInputError, StateMismatchError
from bayesal.laplace import PosteriorOptions

from .engine import log_header, resolve_seed
from .schema import MAX_CLASS_NAME, MAX_CLASSES, MAX_DEPTH, depth

__all__ = [
    "POSTERIOR_KEYS", "saved_options", "saved_prior_mean", "feature_hash", "check_class_names", "new_header",
    "check_features",
]

#: The :class:`PosteriorOptions` fields a header saves under ``posterior`` (``head`` and ``gamma`` have
#: their own keys).
POSTERIOR_KEYS = ("prior_precision", "curvature", "hessian", "lambda_mf", "steps", "spread", "exact_until")

#: Options of sessions saved before they were recorded: the defaults of that time (the paper's update
#: before curvature and steps were saved, the plain Laplace predictive before the spread was, Newton
#: updates from the first label before the exact early phase was).
LEGACY_POSTERIOR_DEFAULTS = {"curvature": "gaussian", "steps": 1, "spread": 1.0, "exact_until": 0}


def feature_hash(features: torch.Tensor) -> str:
    """BLAKE2b digest of the pool features ``(N, D)`` as float64 (independent of the input dtype)."""
    arr = np.ascontiguousarray(features.detach().cpu().to(torch.float64).numpy())
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(arr.shape).encode())
    h.update(memoryview(arr).cast("B"))  # type: ignore[arg-type]  # numpy's stubs lack the buffer protocol
    return h.hexdigest()


def check_class_names(class_names: Sequence[str] | int) -> list[str]:
    """The class names as strings (``"0" … "C-1"`` for an integer ``C``); at least 2, unique."""
    if isinstance(class_names, (int, np.integer)) and not isinstance(class_names, bool):
        names = [str(c) for c in range(int(class_names))]
    else:
        names = [str(c) for c in class_names]  # type: ignore[union-attr]
    if len(names) < 2:
        raise InvalidInputError(f"need at least 2 classes, got {len(names)}")
    if len(names) > MAX_CLASSES:
        raise InvalidInputError(f"a session holds at most {MAX_CLASSES:,} classes, got {len(names):,}")
    long = [n for n in names if len(n) > MAX_CLASS_NAME]
    if long:
        raise InvalidInputError(f"class names are limited to {MAX_CLASS_NAME} characters; {len(long)} class name(s) "
                                f"are longer (the first has {len(long[0]):,}: {long[0][:40]!r}…); shorten them")
    if len(set(names)) != len(names):
        raise InvalidInputError(f"class names must be unique, got {names[:50]}")
    return names


COLD_STARTS = ("random", "cover")  # how a session picks before its labels span the classes


def _check_json(value: Any, what: str) -> None:
    """Raise :class:`InvalidInputError` unless ``value`` can be saved in the session header (JSON: strings,
    finite numbers, booleans, None, lists and string-keyed dicts, nested at most ``MAX_DEPTH`` deep)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"{what} must hold only JSON values (strings, finite numbers, booleans, None, lists, "
                                f"dicts), as it is saved in the session header: {err}") from err
    if depth(value) > MAX_DEPTH - 2:
        raise InvalidInputError(f"{what} is nested deeper than {MAX_DEPTH - 2} levels")


def new_header(
    x: torch.Tensor,
    class_names: Sequence[str] | int,
    *,
    strategy: dict[str, Any],
    options: PosteriorOptions | None,
    retrain_every: int | None,
    candidate_size: int | None,
    random_state: int | None,
    meta: Mapping[str, Any] | None,
    reselect: Mapping[str, Any] | None = None,
    cold_start: str = "random",
    prior_mean: Any = None,
    audit_rate: float = 0.0,
) -> dict[str, Any]:
    """Validate the settings of a new session over the pool ``x`` ``(N, D)`` and build its header.

    ``strategy`` is the strategy's saved description (``name``, ``kwargs``, ``object``); ``options``
    of ``None`` are the default :class:`~bayesal.laplace.settings.PosteriorOptions`. They are saved
    resolved (``posterior``: :data:`POSTERIOR_KEYS`, ``head`` and ``gamma``), so that a session reloads
    with the same update whatever later versions default to. A ``random_state`` of ``None`` draws a
    seed; it is saved either way. ``prior_mean`` ``(C, D)`` (None: a zero-mean prior) is saved as its rows
    of float64 numbers (JSON keeps them exactly). ``reselect`` is the re-selection schedule's header entry
    (:meth:`~bayesal.labeling.policy.RefitPolicy.header_field`). ``audit_rate`` in ``[0, 1)`` is the
probability that a query is an audit pick (uniformly random; saved only when positive). Raises :class:`~bayesal.exceptions.InvalidInputError` naming the first
    bad setting.
    """
    names = check_class_names(class_names)
    if retrain_every is not None and (isinstance(retrain_every, bool) or not isinstance(retrain_every, int)
                                      or retrain_every < 1):
        raise InvalidInputError(f"retrain_every must be a positive integer or None, got {retrain_every!r}")
    if candidate_size is not None and (isinstance(candidate_size, bool) or not isinstance(candidate_size, int)
                                       or candidate_size < 1):
        raise InvalidInputError(f"candidate_size must be a positive integer or None, got {candidate_size!r}")
    _check_json(dict(meta or {}), "meta")
    _check_json(dict(strategy.get("kwargs") or {}), "the strategy's options")
    if options is None:
        options = PosteriorOptions()
    if not isinstance(options, PosteriorOptions):
        raise InvalidInputError(f"options must be a PosteriorOptions, got {type(options).__name__}")
    if (isinstance(audit_rate, bool) or not isinstance(audit_rate, (int, float, np.floating))
            or not 0.0 <= float(audit_rate) < 1.0):
        raise InvalidInputError(f"audit_rate must be a number in [0, 1), got {audit_rate!r}")
    if cold_start not in COLD_STARTS:
        raise InvalidInputError(f"cold_start must be one of {', '.join(COLD_STARTS)}, got {cold_start!r}")
    saved = options.to_dict()
    header = log_header(
        resolve_seed(random_state),
        session_id=uuid.uuid4().hex,
        num_items=int(x.shape[0]),
        num_features=int(x.shape[1]),
        feature_hash=feature_hash(x),
        class_names=names,
        strategy=strategy,
        posterior={k: saved[k] for k in POSTERIOR_KEYS},
        head=saved["head"],
        gamma=saved["gamma"],
        retrain_every=retrain_every,
        reselect=None if reselect is None else dict(reselect),
        candidate_size=candidate_size,
        meta=dict(meta or {}),
    )
    if audit_rate > 0:  # without an audit stream the header stays as earlier versions wrote it
        header["audit_rate"] = float(audit_rate)
    if cold_start != "random":  # the default leaves the header as earlier versions wrote it
        header["cold_start"] = cold_start
    if prior_mean is not None:
        m0 = _prior_mean_tensor(prior_mean, len(names), int(x.shape[1]), InvalidInputError)
        header["prior_mean"] = m0.tolist()
    return header


def _prior_mean_tensor(value: Any, c: int, d: int, error: type[Exception]) -> torch.Tensor:
    """``value`` as a finite float64 ``(C, D)`` tensor, else ``error`` naming the problem."""
    try:
        m0 = torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise error(f"prior_mean must be a (C, D) array of numbers: {err}") from err
    if tuple(m0.shape) != (c, d):
        raise error(f"prior_mean has shape {tuple(m0.shape)}, expected (C, D) = ({c}, {d})")
    if not bool(torch.isfinite(m0).all()):
        raise error("prior_mean contains NaN or inf")
    return m0


def saved_prior_mean(header: Mapping[str, Any]) -> torch.Tensor | None:
    """The prior mean ``(C, D)`` float64 a session header saved (None: the zero-mean prior); raises
    :class:`~bayesal.exceptions.CorruptStateError` when it does not match the header's classes and features."""
    if header.get("prior_mean") is None:
        return None
    return _prior_mean_tensor(header["prior_mean"], len(header["class_names"]), int(header["num_features"]),
                              CorruptStateError)


def saved_options(header: Mapping[str, Any]) -> PosteriorOptions:
    """The posterior options a session header saved (``posterior``, ``head`` and ``gamma``); options it
    predates get the defaults of the version that wrote it (:data:`LEGACY_POSTERIOR_DEFAULTS`, then
    those of :class:`~bayesal.laplace.settings.PosteriorOptions`). Raises
    :class:`~bayesal.exceptions.InvalidInputError` for an unknown or bad setting."""
    posterior = {**LEGACY_POSTERIOR_DEFAULTS, **dict(header.get("posterior") or {})}
    return PosteriorOptions.from_dict({**posterior, "gamma": header["gamma"], "head": dict(header["head"])})


def check_features(header: Mapping[str, Any], x: torch.Tensor, state_dir: Path) -> None:
    """Raise :class:`~bayesal.exceptions.StateMismatchError` unless ``x`` is the pool ``header`` was
    made for (same shape and feature hash)."""
    shape = (header["num_items"], header["num_features"])
    if tuple(x.shape) != shape:
        raise StateMismatchError(
            f"the session in {state_dir} was created for pool features of shape {shape}, got {tuple(x.shape)}"
        )
    if feature_hash(x) != header["feature_hash"]:
        raise StateMismatchError(
            f"the pool features do not match the session in {state_dir}: feature hash mismatch "
            "(different data, order or preprocessing)"
        )
