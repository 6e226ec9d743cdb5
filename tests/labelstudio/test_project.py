"""The project model's event fold: incremental updates, changes, deletions, refits and restarts all
give the posterior of the chained Bayesian updates over the live annotations in creation order."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bayesal.exceptions import InvalidInputError, StateMismatchError
from bayesal.labelstudio.config import parse_label_config
from bayesal.labelstudio.project import SNAPSHOT_NAME, ProjectModel
from bayesal.laplace.head import HeadConfig

D, GAMMA = 6, 10.0
#: the chain below is the paper's one-step update with the gaussian curvature
PAPER_UPDATE = {"gamma": GAMMA, "curvature": "gaussian", "steps": 1}
CONFIG = parse_label_config('<View><Text name="t" value="$text"/><Choices name="c" toName="t">'
                            '<Choice value="a"/><Choice value="b"/><Choice value="c"/></Choices></View>')
POOL = np.random.default_rng(0).normal(size=(8, D)).astype(np.float32)


def dense_chain(observed: list[tuple[int, str]], classes=("a", "b", "c")) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, covariance)`` of chained one-point updates from N(0, I), by explicit inverses."""
    prec = torch.eye(D, dtype=torch.float64)
    mu = torch.zeros(len(classes), D, dtype=torch.float64)
    for task, label in observed:
        phi = torch.as_tensor(POOL[task], dtype=torch.float64)
        y = torch.zeros(len(classes), dtype=torch.float64)
        y[classes.index(label)] = 1
        p = torch.softmax(mu @ phi, 0)
        prec = prec + torch.outer(phi, phi)
        mu = mu + GAMMA * torch.outer(y - p, torch.linalg.inv(prec) @ phi)
    return mu, torch.linalg.inv(prec)


def state(model: ProjectModel) -> tuple[torch.Tensor, torch.Tensor]:
    s = model.posterior().state_dict()
    return s["mean"], s["covariance"]


def open_model(path, **kw) -> ProjectModel:
    kw.setdefault("fsync", False)
    kw.setdefault("seed", 0)
    kw.setdefault("head_config", HeadConfig.paper())
    model = ProjectModel(path, D, **{**PAPER_UPDATE, **kw})
    model.set_config(CONFIG)
    return model


ops = st.lists(
    st.tuples(st.sampled_from(["create", "update", "delete"]), st.integers(0, 7), st.sampled_from("abc")),
    min_size=1, max_size=14,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops)
def test_any_event_sequence_gives_the_chain_over_the_live_annotations(events):
    with tempfile.TemporaryDirectory() as tmp:
        model = open_model(Path(tmp) / "p")
        live: dict[int, tuple[int, str]] = {}  # annotation id -> (task, label), in creation order
        next_id = 1
        for op, k, label in events:
            if op == "create" or not live:
                model.annotate(next_id, k, [label], POOL[k])
                live[next_id] = (k, label)
                next_id += 1
            elif op == "update":
                aid = list(live)[k % len(live)]
                model.annotate(aid, live[aid][0], [label], POOL[live[aid][0]])
                live[aid] = (live[aid][0], label)
            else:
                aid = list(live)[k % len(live)]
                assert model.delete(aid)
                del live[aid]
            mean, cov = state(model)
            ref_mean, ref_cov = dense_chain(list(live.values()))
            torch.testing.assert_close(mean, ref_mean, atol=1e-9, rtol=1e-7)
            torch.testing.assert_close(cov, ref_cov, atol=1e-9, rtol=1e-7)
        version = model.model_version
        model.close()
        # the log alone (no snapshot) gives the same model
        (Path(tmp) / "p" / SNAPSHOT_NAME).unlink(missing_ok=True)
        again = open_model(Path(tmp) / "p")
        assert again.model_version == version
        torch.testing.assert_close(state(again)[0], dense_chain(list(live.values()))[0], atol=1e-9, rtol=1e-7)
        again.close()


def test_a_stale_snapshot_resumes_and_replays_the_rest(tmp_path):
    model = open_model(tmp_path / "p", snapshot_interval=0.0)
    for i in range(4):
        model.annotate(i, i, ["abc"[i % 3]], POOL[i])
    model.close()
    stale = tmp_path / "stale.state"
    shutil.copy(tmp_path / "p" / SNAPSHOT_NAME, stale)  # the posterior after 4 annotations
    model = open_model(tmp_path / "p")
    model.annotate(10, 5, ["c"], POOL[5])  # an update after the snapshot: resumed incrementally
    model.annotate(11, 6, ["a"], POOL[6])
    model.delete(2)  # a deletion after it: refolded
    model.annotate(12, 7, ["b"], POOL[7])
    expected = state(model)
    model.close()
    shutil.copy(stale, tmp_path / "p" / SNAPSHOT_NAME)
    again = open_model(tmp_path / "p")
    torch.testing.assert_close(state(again), expected)
    ref = dense_chain([(0, "a"), (1, "b"), (3, "a"), (5, "c"), (6, "a"), (7, "b")])
    torch.testing.assert_close(state(again), ref, atol=1e-9, rtol=1e-7)
    again.close()


def test_a_snapshot_from_other_settings_is_not_used(tmp_path):
    model = open_model(tmp_path / "p")
    model.annotate(1, 0, ["a"], POOL[0])
    model.close()
    other = ProjectModel(tmp_path / "p", D, **{**PAPER_UPDATE, "gamma": 1.0}, head_config=HeadConfig.paper(),
                         fsync=False)  # γ changed: refold with γ = 1
    mean = other.posterior().state_dict()["mean"]
    phi = torch.as_tensor(POOL[0], dtype=torch.float64)
    sigma = torch.linalg.inv(torch.eye(D, dtype=torch.float64) + torch.outer(phi, phi))
    expected = torch.outer(torch.tensor([2 / 3, -1 / 3, -1 / 3], dtype=torch.float64), sigma @ phi)
    torch.testing.assert_close(mean, expected, atol=1e-9, rtol=1e-7)
    other.close()


@pytest.mark.slow
def test_train_refits_and_later_annotations_update_the_refit(tmp_path):
    from bayesal.laplace.posterior import LastLayerLaplace

    model = open_model(tmp_path / "p")
    for i, lab in enumerate("abcab"):
        model.annotate(i, i, [lab], POOL[i])
    model.train()
    fitted = model.posterior().state_dict()
    probs, _ = model.predict(POOL[:5])
    assert probs.argmax(1).tolist() == [0, 1, 2, 0, 1]  # the refit head reproduces its labels
    model.annotate(9, 6, ["c"], POOL[6])
    expected = LastLayerLaplace.from_state_dict(fitted).update(
        torch.as_tensor(POOL[6:7], dtype=torch.float64), torch.tensor([2]), gamma=GAMMA
    ).state_dict()
    torch.testing.assert_close(state(model), (expected["mean"], expected["covariance"]))
    model.close()
    os.remove(tmp_path / "p" / SNAPSHOT_NAME)
    again = open_model(tmp_path / "p")  # the refit is redone from the log, with the same seed
    torch.testing.assert_close(state(again), (expected["mean"], expected["covariance"]))
    again.close()


def test_labels_of_removed_classes_are_ignored_until_they_return(tmp_path):
    model = open_model(tmp_path / "p")
    model.annotate(1, 0, ["a"], POOL[0])
    model.annotate(2, 1, ["c"], POOL[1])
    two = parse_label_config('<View><Text name="t" value="$text"/><Choices name="c" toName="t">'
                             '<Choice value="a"/><Choice value="b"/></Choices></View>')
    assert model.set_config(two)
    torch.testing.assert_close(state(model), dense_chain([(0, "a")], classes=("a", "b")), atol=1e-9, rtol=1e-7)
    assert model.set_config(CONFIG)
    torch.testing.assert_close(state(model), dense_chain([(0, "a"), (1, "c")]), atol=1e-9, rtol=1e-7)
    assert not model.set_config(CONFIG)
    model.close()


def test_multi_choice_annotations_are_soft_labels(tmp_path):
    model = open_model(tmp_path / "p")
    model.annotate(1, 0, ["a", "c"], POOL[0])
    phi = torch.as_tensor(POOL[0], dtype=torch.float64)
    sigma = torch.linalg.inv(torch.eye(D, dtype=torch.float64) + torch.outer(phi, phi))
    y = torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(state(model)[0], GAMMA * torch.outer(y - 1 / 3, sigma @ phi), atol=1e-9, rtol=1e-7)
    model.close()


def test_bad_input_is_refused_and_nothing_is_lost(tmp_path):
    model = open_model(tmp_path / "p")
    model.annotate(1, 0, ["a"], POOL[0])
    with pytest.raises(InvalidInputError):
        model.annotate(2, 1, ["b"], np.full(D, np.nan))
    with pytest.raises(InvalidInputError):
        model.annotate(2, 1, ["b"], np.zeros(D + 1))
    with pytest.raises(InvalidInputError, match="per-task score"):
        ProjectModel(tmp_path / "q", D, strategy="badge")
    assert model.annotation_ids() == [1]
    model.close()
    with pytest.raises(StateMismatchError, match="6-d"):
        ProjectModel(tmp_path / "p", D + 2)
    again = open_model(tmp_path / "p")
    assert again.annotation_ids() == [1] and again.labeled_tasks() == {0: ("a",)}
    again.close()


def test_one_backend_per_project_folder(tmp_path):
    from bayesal.exceptions import SessionLockedError

    model = open_model(tmp_path / "p")
    with pytest.raises(SessionLockedError):
        ProjectModel(tmp_path / "p", D)
    model.close()


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_annotation(tmp_path, recorded, harness):
    """The real CLI server, killed with SIGKILL after acknowledging webhooks, restarts with the same model."""
    pytest.importorskip("uvicorn")
    pytest.importorskip("sentence_transformers")
    port = harness.free_port()
    cmd = [sys.executable, "-m", "bayesal", "labelstudio", "--state-dir", str(tmp_path / "state"),
           "--port", str(port), "--seed", "0", "--log-level", "warning"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2] / "src"))

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    return proc
            except httpx.HTTPError:
                time.sleep(0.2)
        proc.kill()
        raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "no output")

    url = f"http://127.0.0.1:{port}"
    pbody = recorded("text_predict_post")
    proc = start()
    try:
        assert httpx.post(url + "/setup", json=recorded("text_setup_post"), timeout=60).status_code == 200
        for k, label in enumerate(["sport", "business", "tech"]):
            body = recorded("text_webhook_annotation_created")
            body["annotation"].update(id=10 + k, task=pbody["tasks"][k]["id"])
            body["annotation"]["result"][0]["value"]["choices"] = [label]
            body["task"] = pbody["tasks"][k]
            assert httpx.post(url + "/webhook", json=body, timeout=120).status_code == 201
        assert httpx.post(url + "/webhook", json=dict(recorded("text_webhook_annotations_deleted"),
                                                      annotations=[{"id": 11}]), timeout=60).json()["changed"] == 1
        before = httpx.post(url + "/predict", json=pbody, timeout=120).json()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    proc = start()
    try:
        after = httpx.post(url + "/predict", json=pbody, timeout=120).json()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert after["model_version"] == before["model_version"]
    np.testing.assert_allclose([r["score"] for r in after["results"]], [r["score"] for r in before["results"]], atol=1e-6)


def test_sequential_margin_puts_a_diverse_batch_on_top(tmp_path):
    """``seq-margin``: b picks with an update after each score above all other tasks, in pick order;
    an exact duplicate of the first pick is not picked again (top-b margin would take all copies)."""
    plain = open_model(tmp_path / "plain")
    seq = open_model(tmp_path / "seq", strategy="seq-margin", batch_size=3)
    for i, lab in enumerate("ab"):
        for m in (plain, seq):
            m.annotate(i, i, [lab], POOL[i])
    _, u = plain.predict(POOL)
    top = int(torch.argmax(u[2:])) + 2
    pool = np.concatenate([POOL, POOL[[top, top]]])  # two more copies of the most uncertain task
    labeled = [True, True] + [False] * (len(pool) - 2)
    _, base = plain.predict(pool)
    assert len({round(float(base[i]), 12) for i in (top, len(POOL), len(POOL) + 1)}) == 1
    _, scores = seq.predict(pool, labeled=labeled)
    picks = [int(i) for i in torch.argsort(scores, descending=True)[:3]]
    np.testing.assert_allclose(sorted(scores[picks].tolist(), reverse=True), [2.0, 1 + 2 / 3, 1 + 1 / 3])
    assert picks[0] in (top, len(POOL), len(POOL) + 1)  # the first pick is the plain margin's best
    copies = {top, len(POOL), len(POOL) + 1}
    assert len(copies & set(picks)) == 1  # ... and its copies are not picked again
    assert not set(picks) & {0, 1}  # labeled tasks are never picked
    rest = [i for i in range(len(pool)) if i not in picks]
    torch.testing.assert_close(scores[rest], base[rest])  # the others keep the margin utility
    with pytest.raises(InvalidInputError):
        seq.predict(pool, labeled=[True])
    plain.close()
    seq.close()


def test_default_settings_track_the_exact_map_and_refit_the_exact_head(tmp_path):
    """By default an annotation is the library's iterated update (γ = 1, damped Newton steps toward the
    mode of the prior × the new likelihood) and Start Training refits the exact MAP head for λ₀."""
    from bayesal.laplace.update import FIDELITY_OPTIONS

    model = ProjectModel(tmp_path / "p", D, fsync=False, seed=0)
    model.set_config(CONFIG)
    assert (model.gamma, model.head_config) == (FIDELITY_OPTIONS["gamma"], HeadConfig())
    model.annotate(1, 0, ["b"], POOL[0])
    phi = torch.as_tensor(POOL[0], dtype=torch.float64)

    def objective(w):  # −log of N(0, I) × p(b | φ, W), bias 0
        return 0.5 * (w * w).sum() - torch.log_softmax(w.view(3, D) @ phi, 0)[1]

    w = torch.zeros(3 * D, dtype=torch.float64)
    for _ in range(30):
        w = w - torch.linalg.solve(torch.autograd.functional.hessian(objective, w),
                                   torch.autograd.functional.jacobian(objective, w))
    mean = state(model)[0]
    one_step = mean.new_tensor([[-1 / 3], [2 / 3], [-1 / 3]]) * (phi / (1 + phi @ phi))  # the paper's γ = 1 step
    assert float((mean - w.view(3, D)).abs().max()) < 1e-3 < float((one_step - w.view(3, D)).abs().max())
    for i, lab in enumerate("abca", start=1):
        model.annotate(1 + i, i, [lab], POOL[i])
    model.train()
    fitted = model.posterior()
    x = torch.as_tensor(POOL[:5], dtype=torch.float64)
    y = torch.tensor([1, 0, 1, 2, 0])
    weight, bias = fitted.mean.clone().requires_grad_(), fitted.bias.clone().requires_grad_()
    loss = (0.5 * (weight**2).sum() + 0.5 * HeadConfig().bias_precision * (bias**2).sum()
            - torch.log_softmax(x @ weight.T + bias, 1)[torch.arange(5), y].sum())
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, (weight, bias))])
    assert float(grad.norm()) < 1e-4  # the refit is the MAP of the posterior's own objective
    model.close()
