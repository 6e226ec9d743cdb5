"""A real Label Studio 1.23 server on 127.0.0.1 with bayesal as its ML backend.

Label Studio is found through ``BAYESAL_LABEL_STUDIO`` (its ``label-studio`` executable, installed in a
virtual environment of its own: it pins Django and NumPy); without it the test is skipped with that
reason. CI (``.ci/run``) installs it and always runs this test. The first start migrates Label
Studio's database (a few minutes).

Everything goes through Label Studio's REST API, as a user's clicks would: create a project, import
tasks, connect the model, retrieve predictions, annotate, change and delete an annotation, start
training. The backend hears about annotations only through Label Studio's webhooks.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("fastapi", reason="the serve extra (FastAPI) is not installed")
pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(harness, tmp_path_factory):
    exe = harness.label_studio_executable()
    if exe is None:
        if os.environ.get("BAYESAL_LABEL_STUDIO_REQUIRED"):  # `make test-labelstudio` (CI): a skip would hide it
            pytest.fail(f"{harness.ENV_VAR}={os.environ.get(harness.ENV_VAR)!r} is not a label-studio executable")
        pytest.skip(f"Label Studio is not installed: set {harness.ENV_VAR} to its label-studio executable "
                    "(e.g. python3 -m venv .lsvenv && .lsvenv/bin/pip install label-studio==1.23.2)")
    pytest.importorskip("sentence_transformers", reason="the text extras (MiniLM) are not installed")
    from bayesal.labelstudio import BackendSettings, LabelStudioBackend, create_app

    tmp = tmp_path_factory.mktemp("labelstudio")
    backend = LabelStudioBackend(tmp / "bayesal-state", BackendSettings(seed=0))
    server = harness.ThreadedServer(create_app(backend)).start()
    try:
        ls = harness.LabelStudio.start(exe, tmp / "ls")
    except BaseException:
        server.stop()
        raise
    yield ls, server, backend
    ls.stop()
    server.stop()


def current_predictions(ls, project: int, version: str) -> dict[int, dict]:
    preds = [p for p in ls.predictions(project) if p["model_version"] == version]
    return {p["task"]: p for p in preds}


def test_label_studio_drives_the_bayesian_updates(stack, harness):
    ls, server, backend = stack
    project = ls.create_project("bayesal active learning", harness.TEXT_CONFIG)
    tasks = ls.import_tasks(project, [{"data": {"text": t}} for t, _ in harness.TEXTS])
    truth = dict(zip(tasks, [label for _, label in harness.TEXTS]))
    assert len(tasks) == len(harness.TEXTS)

    ml = ls.connect_backend(project, server.url)
    assert ml["state"] == "CO", ml  # connected: health and setup answered
    v0 = ls.ml_backend(ml["id"])["model_version"]
    assert v0.startswith("bayesal-")

    ls.retrieve_predictions(project)
    first = current_predictions(ls, project, v0)
    assert set(first) == set(tasks)
    assert all(abs(p["score"] - 1.0) < 1e-6 for p in first.values())  # the prior: every task equally useful
    assert all(p["result"][0]["from_name"] == "topic" for p in first.values())

    # annotate three tasks in Label Studio; each annotation reaches the backend as a webhook
    labeled = tasks[:3]
    annotations = {t: ls.annotate(t, truth[t]) for t in labeled}
    ls.retrieve_predictions(project)
    v1 = ls.ml_backend(ml["id"])["model_version"]
    assert v1 != v0
    second = current_predictions(ls, project, v1)
    assert set(second) == set(tasks)
    scores = {t: p["score"] for t, p in second.items()}
    assert len({round(s, 6) for s in scores.values()}) > 1  # the updates made some tasks more useful than others
    assert any(abs(scores[t] - 1.0) > 1e-3 for t in tasks)
    for t in labeled:  # the labeled tasks are predicted as labeled
        assert second[t]["result"][0]["value"]["choices"] == [truth[t]]

    # the backend's own view agrees with what Label Studio stored
    proj = backend.project(str(project))  # a bare project id finds its one folder
    assert proj.model.labeled_tasks() == {t: (truth[t],) for t in labeled}
    assert proj.model.model_version == v1

    # change an annotation's label, then delete another: each gives a new model and new predictions
    wrong = "business" if truth[labeled[0]] != "business" else "tech"
    ls.update_annotation(annotations[labeled[0]], wrong)
    ls.retrieve_predictions(project)
    v2 = ls.ml_backend(ml["id"])["model_version"]
    third = current_predictions(ls, project, v2)
    assert v2 != v1 and third[labeled[0]]["result"][0]["value"]["choices"] == [wrong]
    assert proj.model.labeled_tasks()[labeled[0]] == (wrong,)

    ls.delete_annotation(annotations[labeled[1]])
    ls.retrieve_predictions(project)
    v3 = ls.ml_backend(ml["id"])["model_version"]
    assert v3 != v2 and labeled[1] not in proj.model.labeled_tasks()
    assert current_predictions(ls, project, v3).keys() == set(tasks)

    # "Start training" in Label Studio refits the head from scratch on the annotations
    ls.start_training(ml["id"])
    ls.retrieve_predictions(project)
    v4 = ls.ml_backend(ml["id"])["model_version"]
    assert v4 != v3
    assert v4 in ls.versions(ml["id"])["versions"]

    # the Data Manager sorted by "Prediction score" serves the task the backend's strategy ranks first
    unlabeled = [t for t in tasks if t not in proj.model.labeled_tasks()]
    ranked = [t["id"] for t in ls.tasks_by_score(project) if t["id"] in unlabeled]
    shown = {t["id"]: t["predictions_score"] for t in ls.tasks_by_score(project)}
    text = dict(zip(tasks, [x for x, _ in harness.TEXTS]))
    results, version = backend.predict([{"id": t, "data": {"text": text[t]}} for t in unlabeled], str(project), None)
    assert version == v4
    utility = {t: r["score"] for t, r in zip(unlabeled, results)}
    assert ranked[0] == max(unlabeled, key=utility.get)
    for t in unlabeled:  # the column shows the current model's score only (older predictions are kept too)
        assert shown[t] == pytest.approx(utility[t], abs=1e-6)


@pytest.fixture(scope="module")
def pushing(stack, harness, tmp_path_factory, minilm):
    """A second backend, given Label Studio's URL and API token: it pushes its predictions itself.
    ``requests`` records every call Label Studio makes on it."""
    from bayesal.labelstudio import BackendSettings, LabelStudioBackend, LabelStudioClient, PredictionPusher, create_app

    ls = stack[0]
    backend = LabelStudioBackend(tmp_path_factory.mktemp("pushing") / "state", BackendSettings(seed=0),
                                 backbones={"text": minilm})
    pusher = PredictionPusher(backend, LabelStudioClient(ls.url, harness.TOKEN), tolerance=0.0)
    app = create_app(backend, pusher=pusher)
    requests: list[dict] = []
    app.middleware("http")(harness.recording_middleware(requests))
    server = harness.ThreadedServer(app).start()
    yield server, backend, pusher, requests
    server.stop()


def test_label_studio_sorts_by_fresh_scores_without_retrieving_predictions(stack, pushing, harness):
    import time

    ls = stack[0]
    server, backend, pusher, requests = pushing
    project = ls.create_project("bayesal pushes its scores", harness.TEXT_CONFIG)
    texts = [t for t, _ in harness.TEXTS] + [f"{t} again" for t, _ in harness.TEXTS]
    tasks = ls.import_tasks(project, [{"data": {"text": t}} for t in texts])
    truth = dict(zip(tasks, [label for _, label in harness.TEXTS] * 2))
    ml = ls.connect_backend(project, server.url)
    assert ml["state"] == "CO", ml

    def shown() -> dict[int, float | None]:
        return {t["id"]: t["predictions_score"] for t in ls.tasks_by_score(project)}

    def wait_for(condition, what: str, timeout: float = 60.0) -> float:
        t0 = time.monotonic()
        while not condition():
            assert time.monotonic() - t0 < timeout, f"{what} within {timeout} s; push status {pusher.status()}"
            time.sleep(0.05)
        return time.monotonic() - t0

    def expected() -> dict[int, float]:
        results, _ = backend.predict([{"id": t, "data": {"text": x}} for t, x in zip(tasks, texts)], str(project), None)
        return {t: r["score"] for t, r in zip(tasks, results)}

    # connecting is enough: every task gets a score, without "Retrieve predictions"
    wait_for(lambda: all(s is not None for s in shown().values()), "the first push")
    assert shown() == pytest.approx(expected(), abs=1e-6)

    # Label Studio counts the backend's live predictions, one per task, updated in place
    live = ls.ml_backend(ml["id"])["model_version"]
    assert live.startswith("bayesal-") and live.endswith("-live")

    # an annotation re-sorts the Data Manager by itself
    before = [t["id"] for t in ls.tasks_by_score(project)]
    version = backend.project(str(project)).model.model_version
    first = before[0]
    ls.annotate(first, truth[first])
    assert backend.project(str(project)).model.model_version != version
    seconds = wait_for(lambda: shown() == pytest.approx(expected(), abs=1e-6), "the new scores")
    after = [t["id"] for t in ls.tasks_by_score(project)]
    assert after != before
    unlabeled = [t for t in tasks if t != first]
    scores = expected()
    assert [t for t in after if t != first][0] == max(unlabeled, key=scores.get)

    # a burst of annotations: the latest scores arrive, and only the current version's predictions remain
    for t in after[:3]:
        if t != first:
            ls.annotate(t, truth[t])
    wait_for(lambda: shown() == pytest.approx(expected(), abs=1e-6), "the scores after a burst")
    pusher.flush(30)
    stored = ls.predictions(project)
    assert {p["model_version"] for p in stored} == {live}
    assert sorted(p["task"] for p in stored) == sorted(tasks)  # nothing piled up
    assert all(p["result"][0]["value"]["choices"][0] in ("sport", "business", "tech") for p in stored)
    assert all(0.0 <= p["result"][0]["score"] <= 1.0 for p in stored)  # the class probability

    assert not [r for r in requests if r["path"] == "/predict"]  # nothing was retrieved
    status = ls.http.get(f"{server.url}/health").json()["push"]
    assert status["last_error"] is None and status["predictions_updated"] > 0
    print(f"annotation -> new scores visible: {seconds:.2f} s")
