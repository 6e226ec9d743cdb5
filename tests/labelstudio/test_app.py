"""Every route of the Label Studio ML backend, driven with the request bodies Label Studio 1.23.2 sent
(recorded from a live server by ``record_label_studio_bodies.py``), checked against a dense reference
of the Bayesian updates."""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra (FastAPI) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from bayesal.labelstudio import BackendSettings, LabelStudioBackend, create_app  # noqa: E402
from bayesal.laplace import PosteriorOptions  # noqa: E402

GAMMA = 10.0
LAMBDA_MF = math.pi / 8
CLASSES = ["sport", "business", "tech"]


def reference_state(observed: list[tuple[np.ndarray, np.ndarray]], d: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(C, D)`` and precision ``(D, D)`` after chained one-point Newton updates from the prior N(0, I),
    with an explicit dense inverse of the precision (the textbook computation the backend must match)."""
    prec = torch.eye(d, dtype=torch.float64)
    mu = torch.zeros(num_classes, d, dtype=torch.float64)
    for phi_np, y_np in observed:
        phi, y = torch.as_tensor(phi_np, dtype=torch.float64), torch.as_tensor(y_np, dtype=torch.float64)
        p = torch.softmax(mu @ phi, 0)
        prec = prec + torch.outer(phi, phi)
        sigma = torch.linalg.inv(prec)
        mu = mu + GAMMA * torch.outer(y - p, sigma @ phi)
    return mu, prec


def reference_probs(observed: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray, num_classes: int) -> torch.Tensor:
    """Mean-field predictive of :func:`reference_state` at ``x``."""
    mu, prec = reference_state(observed, x.shape[1], num_classes)
    sigma = torch.linalg.inv(prec)
    xt = torch.as_tensor(x, dtype=torch.float64)
    var = ((xt @ sigma) * xt).sum(1)
    return torch.softmax((xt @ mu.T) / torch.sqrt(1 + LAMBDA_MF * var)[:, None], 1)


def reference_doubt(observed: list[tuple[np.ndarray, np.ndarray]], k: int, num_classes: int) -> float:
    """The label doubt ``a / (a + g)`` of the ``k``-th observation under :func:`reference_state` without it
    (its (gaussian-curvature) precision term removed densely, the mean moved by one γ-scaled Newton step):
    ``g`` the probability of its label, ``a`` that of the likeliest class it was not given."""
    phi_np, y_np = observed[k]
    mu, prec = reference_state(observed, len(phi_np), num_classes)
    phi, y = torch.as_tensor(phi_np, dtype=torch.float64), torch.as_tensor(y_np, dtype=torch.float64)
    sigma = torch.linalg.inv(prec - torch.outer(phi, phi))
    mu = mu + GAMMA * torch.outer(torch.softmax(mu @ phi, 0) - y, sigma @ phi)
    probs = torch.softmax((mu @ phi) / torch.sqrt(1 + LAMBDA_MF * phi @ sigma @ phi), 0)
    given, other = float(probs @ y), float(probs.masked_fill(y > 0, 0.0).max())
    return other / (other + given)


def expected_scores(observed: list[tuple[np.ndarray, np.ndarray]], tasks: list[dict], annotated: list[int],
                    x: np.ndarray, num_classes: int = 3) -> np.ndarray:
    """The backend's scores: the margin utility, and for a task with an annotation (``annotated[k]`` the
    task id of ``observed[k]``) its label doubt."""
    out = margin_utility(reference_probs(observed, x, num_classes))
    for k, task_id in enumerate(annotated):
        out[[t["id"] for t in tasks].index(task_id)] = reference_doubt(observed, k, num_classes)
    return out


def margin_utility(probs: torch.Tensor) -> np.ndarray:
    top2 = probs.topk(2, dim=1).values
    return (1 - (top2[:, 0] - top2[:, 1])).numpy()


def onehot(label: str, classes=CLASSES) -> np.ndarray:
    y = np.zeros(len(classes))
    y[classes.index(label)] = 1
    return y


@pytest.fixture
def make_client(tmp_path, minilm):
    clients = []

    def make(state="state", basic_auth=None, **settings) -> TestClient:
        settings.setdefault("seed", 0)
        settings.setdefault("fsync", False)
        # the dense references below are the paper's one-step chain
        settings.setdefault("posterior", PosteriorOptions.paper())
        backend = LabelStudioBackend(tmp_path / state, BackendSettings(**settings), backbones={"text": minilm})
        client = TestClient(create_app(backend, basic_auth=basic_auth))
        client.__enter__()  # runs the app's lifespan: leaving it closes the backend's files
        clients.append(client)
        return client

    def close(client: TestClient) -> None:
        clients.remove(client)
        client.__exit__(None, None, None)

    make.close = close
    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def text_features(minilm, recorded):
    tasks = recorded("text_predict_post")["tasks"]
    return {t["id"]: f for t, f in zip(tasks, minilm.encode([t["data"]["text"] for t in tasks], progress=False))}


def predict(client, body) -> dict:
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def scores(response) -> np.ndarray:
    return np.array([res["score"] for res in response["results"]])


def test_health_answers_like_label_studio_expects(make_client, recorded):
    client = make_client()
    assert recorded("text_health_get") is None  # Label Studio's health check is a GET without body
    for path in ("/", "/health"):
        r = client.get(path)
        assert r.status_code == 200 and r.json()["status"] == "UP"
    assert client.get("/metrics").json() == {}


def test_setup_returns_a_model_version_and_rejects_unsupported_configs(make_client, recorded):
    client = make_client()
    body = recorded("text_setup_post")
    r = client.post("/setup", json=body)
    assert r.status_code == 200, r.text
    version = r.json()["model_version"]
    assert version.startswith("bayesal-")
    assert client.post("/setup", json=body).json()["model_version"] == version  # setup twice: nothing changes

    body["schema"] = '<View><Text name="text" value="$text"/><Labels name="ner" toName="text"><Label value="X"/></Labels></View>'
    r = client.post("/setup", json=body)
    assert r.status_code == 400 and "<Choices>" in r.json()["error"]
    body["schema"] = "<View><Text"
    assert client.post("/setup", json=body).status_code == 400
    assert client.post("/setup", json={"project": "1.5"}).status_code == 422  # no schema: pydantic refuses


def test_predict_before_any_annotation_is_the_prior(make_client, recorded, text_features):
    client = make_client()
    body = recorded("text_predict_post")
    out = predict(client, body)
    assert len(out["results"]) == len(body["tasks"])
    for res in out["results"]:
        assert res["model_version"] == out["model_version"]
        (choice,) = res["result"]
        assert (choice["from_name"], choice["to_name"], choice["type"]) == ("topic", "text", "choices")
        assert choice["value"]["choices"][0] in CLASSES
        # the result's score is the class probability; the utility is the prediction's, named as such
        assert choice["score"] == pytest.approx(1 / len(CLASSES), abs=1e-6)
        assert res["utility"] == res["score"]
    # zero-mean prior: every class equally likely, margin utility 1 everywhere
    np.testing.assert_allclose(scores(out), 1.0, atol=1e-6)


def test_annotation_webhooks_apply_the_bayesian_update(make_client, recorded, text_features):
    client = make_client()
    pbody = recorded("text_predict_post")
    x = np.stack([text_features[t["id"]] for t in pbody["tasks"]])
    v0 = predict(client, pbody)["model_version"]

    created = recorded("text_webhook_annotation_created")
    task_id = created["annotation"]["task"]
    assert created["annotation"]["result"][0]["value"]["choices"] == ["sport"]
    r = client.post("/webhook", json=created)
    assert r.status_code == 201 and r.json()["changed"] == 1
    out = predict(client, pbody)
    assert out["model_version"] != v0
    # the annotated task is scored by its label doubt (the paper's γ = 10 step undone by one γ-scaled step)
    expected = expected_scores([(text_features[task_id], onehot("sport"))], pbody["tasks"], [task_id], x)
    np.testing.assert_allclose(scores(out), expected, atol=2e-6)
    ref = reference_probs([(text_features[task_id], onehot("sport"))], x, 3)
    assert out["results"][0]["result"][0]["value"]["choices"] == ["sport"]
    # the <Choices> result carries its class's probability, not the utility
    np.testing.assert_allclose([r["result"][0]["score"] for r in out["results"]], ref.max(1).values.numpy(), atol=2e-6)

    # Label Studio may deliver a webhook twice: nothing changes
    v1 = out["model_version"]
    assert client.post("/webhook", json=created).json()["changed"] == 0
    assert predict(client, pbody)["model_version"] == v1

    updated = recorded("text_webhook_annotation_updated")
    assert updated["annotation"]["id"] == created["annotation"]["id"]
    assert updated["annotation"]["result"][0]["value"]["choices"] == ["tech"]
    assert client.post("/webhook", json=updated).json()["changed"] == 1
    out = predict(client, pbody)
    expected = expected_scores([(text_features[task_id], onehot("tech"))], pbody["tasks"], [task_id], x)
    np.testing.assert_allclose(scores(out), expected, atol=2e-6)
    assert out["results"][0]["result"][0]["value"]["choices"] == ["tech"]

    deleted = recorded("text_webhook_annotations_deleted")
    assert deleted["annotations"] == [{"id": created["annotation"]["id"]}]
    assert client.post("/webhook", json=deleted).json()["changed"] == 1
    out = predict(client, pbody)
    np.testing.assert_allclose(scores(out), 1.0, atol=1e-6)  # back to the prior
    assert len({out["model_version"], v1, v0}) == 3


def _created_for(recorded, annotation_id: int, task: dict, label: str) -> dict:
    body = recorded("text_webhook_annotation_created")
    body["annotation"].update(id=annotation_id, task=task["id"])
    body["annotation"]["result"][0]["value"]["choices"] = [label]
    body["task"] = task
    return body


def test_a_changed_annotation_in_the_middle_refolds_in_order(make_client, recorded, text_features):
    """Three annotations, the first one changed: the posterior is the chain of updates with the new
    label in the first place (not appended at the end)."""
    client = make_client()
    pbody = recorded("text_predict_post")
    tasks = pbody["tasks"]
    x = np.stack([text_features[t["id"]] for t in tasks])
    labels = ["sport", "sport", "business"]
    for k, label in enumerate(labels):
        assert client.post("/webhook", json=_created_for(recorded, 100 + k, tasks[k], label)).status_code == 201
    client.post("/webhook", json=_created_for(recorded, 100, tasks[0], "tech") | {"action": "ANNOTATION_UPDATED"})
    seq = [(text_features[tasks[k]["id"]], onehot(lab)) for k, lab in enumerate(["tech", "sport", "business"])]
    expected = expected_scores(seq, tasks, [t["id"] for t in tasks[:3]], x)
    np.testing.assert_allclose(scores(predict(client, pbody)), expected, atol=2e-6)


def test_cancelled_annotation_counts_as_no_label(make_client, recorded):
    client = make_client()
    body = recorded("text_webhook_annotation_created")
    assert client.post("/webhook", json=body).json()["changed"] == 1
    body["annotation"]["was_cancelled"] = True  # the annotator skipped the task after all
    body["action"] = "ANNOTATION_UPDATED"
    assert client.post("/webhook", json=body).json()["changed"] == 1
    np.testing.assert_allclose(scores(predict(client, recorded("text_predict_post"))), 1.0, atol=1e-6)


def test_tasks_deleted_removes_their_annotations(make_client, recorded):
    client = make_client()
    pbody = recorded("text_predict_post")
    gone = recorded("text_webhook_tasks_deleted")
    (task_id,) = [t["id"] for t in gone["tasks"]]
    task = next(t for t in pbody["tasks"] if t["id"] == task_id)
    client.post("/webhook", json=_created_for(recorded, 7, task, "business"))
    assert not np.allclose(scores(predict(client, pbody)), 1.0)
    assert client.post("/webhook", json=gone).json()["changed"] == 1
    np.testing.assert_allclose(scores(predict(client, pbody)), 1.0, atol=1e-6)


def test_project_updated_with_a_new_class_keeps_the_annotations(make_client, recorded, text_features):
    client = make_client()
    pbody = recorded("text_predict_post")
    created = recorded("text_webhook_annotation_created")
    client.post("/webhook", json=created)
    upd = recorded("text_webhook_project_updated")
    assert "politics" in upd["project"]["label_config"]
    assert client.post("/webhook", json=upd).status_code == 201
    pbody["label_config"] = upd["project"]["label_config"]
    out = predict(client, pbody)
    classes = CLASSES + ["politics"]
    x = np.stack([text_features[t["id"]] for t in pbody["tasks"]])
    observed = [(text_features[created["task"]["id"]], onehot("sport", classes))]
    expected = expected_scores(observed, pbody["tasks"], [created["task"]["id"]], x, 4)
    np.testing.assert_allclose(scores(out), expected, atol=2e-6)


@pytest.mark.slow
def test_start_training_refits_the_head(make_client, recorded):
    client = make_client()
    pbody = recorded("text_predict_post")
    tasks = pbody["tasks"]
    for k, label in enumerate(["sport", "business", "tech", "sport"]):
        client.post("/webhook", json=_created_for(recorded, 200 + k, tasks[k], label))
    before = predict(client, pbody)
    r = client.post("/webhook", json=recorded("text_webhook_start_training"))
    assert r.status_code == 201 and r.json()["status"] == "ok"
    after = predict(client, pbody)
    assert after["model_version"] != before["model_version"]
    assert not np.allclose(scores(after), scores(before))
    # the refit head (200 epochs on 4 labels) reproduces its training labels
    for k, label in enumerate(["sport", "business", "tech", "sport"]):
        assert after["results"][k]["result"][0]["value"]["choices"] == [label]


def test_train_route_syncs_to_label_studios_annotations(make_client, recorded):
    """The older ``/train`` call sends every annotated task: annotations the backend has but Label
    Studio does not are dropped, the others added, then the head is refit."""
    client = make_client()
    pbody = recorded("text_predict_post")
    tasks = pbody["tasks"]
    client.post("/webhook", json=_created_for(recorded, 300, tasks[0], "sport"))  # deleted in LS meanwhile
    ann = recorded("text_webhook_annotation_created")["annotation"]
    exported = [dict(tasks[k], annotations=[dict(ann, id=400 + k, task=tasks[k]["id"], result=[
        {"from_name": "topic", "to_name": "text", "type": "choices", "value": {"choices": [lab]}}])])
        for k, lab in ((1, "business"), (2, "tech"))]
    r = client.post("/train", json={"annotations": exported, "project": pbody["project"], "label_config": pbody["label_config"],
                                     "params": {"login": None, "password": None}})
    assert r.status_code == 201, r.text
    out = predict(client, pbody)
    assert out["model_version"] == r.json()["model_version"]
    assert [out["results"][k]["result"][0]["value"]["choices"][0] for k in (1, 2)] == ["business", "tech"]


def test_versions_lists_the_model_versions(make_client, recorded):
    client = make_client()
    assert client.get("/versions").json() == {"versions": []}
    v = client.post("/setup", json=recorded("text_setup_post")).json()["model_version"]
    assert client.get("/versions").json() == {"versions": [v]}  # Label Studio's GET has no body


def test_other_actions_are_acknowledged_and_ignored(make_client, recorded):
    client = make_client()
    body = {"action": "LABEL_LINK_CREATED", "project": recorded("text_webhook_project_updated")["project"]}
    r = client.post("/webhook", json=body)
    assert r.status_code == 201 and r.json()["status"] == "ignored"


def test_bad_bodies_are_refused_without_touching_the_model(make_client, recorded):
    client = make_client()
    pbody = recorded("text_predict_post")
    created = recorded("text_webhook_annotation_created")
    client.post("/webhook", json=created)
    before = predict(client, pbody)
    bad = recorded("text_webhook_annotation_created")
    bad["annotation"]["id"] = "x"
    assert client.post("/webhook", json=bad).status_code == 400
    bad = recorded("text_webhook_annotation_created")
    bad["annotation"]["id"] = 999
    bad["task"]["data"] = {"other": "no text key"}
    r = client.post("/webhook", json=bad)
    assert r.status_code == 400 and "data['text']" in r.json()["error"]
    assert client.post("/predict", json={"tasks": "nope", "project": "1"}).status_code == 422
    assert client.post("/predict", json=dict(pbody, project="../../etc")).status_code == 400
    assert predict(client, pbody) == before


def test_restart_loses_nothing(make_client, recorded, tmp_path):
    client = make_client()
    pbody = recorded("text_predict_post")
    tasks = pbody["tasks"]
    for k, label in enumerate(["sport", "business", "tech"]):
        client.post("/webhook", json=_created_for(recorded, 500 + k, tasks[k], label))
    client.post("/webhook", json=recorded("text_webhook_start_training"))
    client.post("/webhook", json=_created_for(recorded, 503, tasks[3], "tech"))
    before = predict(client, pbody)
    make_client.close(client)  # shutdown: final snapshot
    again = make_client()
    assert predict(again, pbody) == before
    make_client.close(again)
    # without the snapshot the log alone gives the same model
    (snap,) = list((tmp_path / "state").glob("project-*/posterior.state"))
    snap.unlink()
    third = make_client()
    out = predict(third, pbody)
    assert out["model_version"] == before["model_version"]
    np.testing.assert_allclose(scores(out), scores(before), atol=1e-9)


def test_basic_auth_guards_every_route_but_health(make_client, recorded):
    client = make_client(basic_auth=("ls", "s3cret"))
    body = recorded("text_setup_post")
    assert client.get("/health").status_code == 200
    assert client.post("/setup", json=body).status_code == 401
    wrong = {"Authorization": "Basic " + base64.b64encode(b"ls:nope").decode()}
    assert client.post("/setup", json=body, headers=wrong).status_code == 401
    right = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret").decode()}
    assert client.post("/setup", json=body, headers=right).status_code == 200
    assert client.post("/webhook", json=recorded("text_webhook_annotation_created")).status_code == 401


def test_sequential_margin_scores_a_batch_of_unlabeled_tasks_on_top(make_client, recorded):
    client = make_client(strategy="seq-margin", batch_size=2)
    pbody = recorded("text_predict_post")
    created = recorded("text_webhook_annotation_created")
    client.post("/webhook", json=created)
    s = scores(predict(client, pbody))
    on_top = [t["id"] for t, v in zip(pbody["tasks"], s) if v > 1]
    assert len(on_top) == 2 and created["task"]["id"] not in on_top
    np.testing.assert_allclose(sorted(s[s > 1]), [1.5, 2.0])


def test_a_project_switching_from_text_to_images_is_refused(make_client, recorded):
    client = make_client()
    body = recorded("text_setup_post")
    client.post("/setup", json=body)
    body["schema"] = recorded("image_setup_post")["schema"]
    r = client.post("/setup", json=body)
    assert r.status_code == 400 and "now labels image items" in r.json()["error"]


def test_by_default_an_annotation_is_the_library_update(make_client, recorded, text_features):
    """Without ``paper`` the backend folds the library's default update (γ = 1, damped Newton steps,
    categorical curvature) from the zero-mean prior, the same posterior ``LastLayerLaplace`` gives."""
    from bayesal import LastLayerLaplace
    from bayesal.laplace import leave_one_out

    client = make_client(posterior=BackendSettings().posterior)
    pbody = recorded("text_predict_post")
    x = np.stack([text_features[t["id"]] for t in pbody["tasks"]])
    created = recorded("text_webhook_annotation_created")
    task_id = created["annotation"]["task"]
    assert client.post("/webhook", json=created).status_code == 201
    out = predict(client, pbody)
    d = x.shape[1]
    prior = LastLayerLaplace(prior_precision=1.0).fit(
        torch.zeros(0, d, dtype=torch.float64), torch.zeros(0, dtype=torch.long),
        weight=torch.zeros(3, d, dtype=torch.float64), num_classes=3)
    post = prior.update(torch.as_tensor(text_features[task_id], dtype=torch.float64)[None], torch.tensor([0]))
    assert post.steps > 1 and post.gamma == 1.0
    expected = margin_utility(post.predict_proba(torch.as_tensor(x, dtype=torch.float64)))
    labeled = [t["id"] for t in pbody["tasks"]].index(task_id)
    expected[labeled] = float(leave_one_out(post, x[labeled : labeled + 1], torch.tensor([0])).doubt[0])
    np.testing.assert_allclose(scores(out), expected, atol=2e-6)
    assert out["results"][labeled]["result"][0]["value"]["choices"] == ["sport"]


def test_annotated_tasks_are_scored_by_their_label_doubt(make_client, recorded):
    """With the library's update (γ = 1), the only annotation's score is the doubt of the posterior without
    it — the prior's, 1/2 (the given class against an equally likely other) — while the other tasks keep the
    strategy's utility."""
    client = make_client(posterior=BackendSettings().posterior)
    pbody = recorded("text_predict_post")
    before = scores(predict(client, pbody))
    client.post("/webhook", json=_created_for(recorded, 300, pbody["tasks"][0], "sport"))
    after = scores(predict(client, pbody))
    assert abs(after[0] - 1 / 2) < 0.01
    assert np.all(after[1:] <= 1.0) and not np.allclose(after[1:], before[1:])
