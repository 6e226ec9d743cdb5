"""Time from an annotation in Label Studio to the Data Manager's sort by score being current, with
the backend pushing its predictions (``bayesal labelstudio --label-studio-url … --label-studio-token …``).

A real Label Studio 1.23.2 on 127.0.0.1, started as the integration tests' harness starts it
(``tests/labelstudio/harness.py``: ``BAYESAL_LABEL_STUDIO`` names its ``label-studio`` executable, by
default ``.lsvenv/bin/label-studio``; ``BAYESAL_LABEL_STUDIO_DB_TEMPLATE`` a migrated database, by
default ``.lsvenv/migrated``), a ``--tasks``-task text project (MiniLM features, 3 classes), and the
bayesal backend with a prediction pusher in this process (uvicorn in a thread, default settings:
margin strategy). After connecting the backend (its first push scores every task), the script
annotates, ``--annotations`` times, the task the Data Manager sorts first by prediction score, and
measures from sending the annotation (``POST /api/tasks/<id>/annotations/``: Label Studio answers after
its webhook reached the backend and the update is on disk). With S the backend's new scores (its
``/predict``) and tol the pusher's tolerance (0.001), the Data Manager's view sorted by prediction
score, highest first, polled every 20 ms (a time is taken when the answer arrives):

* ``ls_rescore_s`` (the median): until the task with the highest S shows its S (within tol) as its
  *Prediction score* (the mean over its predictions of the ML backend's model version, as the Data
  Manager computes it; read through ``/api/predictions/?task=`` with the view's poll);
* ``first_row_s``: until the view's first row is current — a task whose S is the highest (within
  tol), showing its S (within tol): the task the annotator opens next. Every task whose stored
  score is above it must have been lowered before (after an annotation that lowers hundreds of
  scores, that takes a new model version of every task or hundreds of updates);
* ``top10_s``: until its first 10 rows are current — 10 tasks among the highest S (each S at least
  the 10th highest S, within tol), each showing its S (within tol);
* with ``--full``: until every task shows its S (``ls_rescore_all_s``), and until the superseded
  predictions are deleted and the project holds one prediction per task again (minutes after a
  change of most scores: Label Studio deletes one prediction per request, ~0.25 s); the next
  annotation is sent only then. Without it the next annotation follows ``--gap`` seconds after the
  10 rows are current (an annotator reading the next task; the pusher goes on meanwhile).

Per annotation the log shows where the time went: Label Studio's answer, the webhook's arrival and
answer at the backend, and the head written (the pusher's ``last_head_s``, from the annotation applied
to its rows written). No *Retrieve predictions* is ever called.

The machine is shared (2 cores, other jobs running): absolute times are noisy. Last two lines::

    tasks=… annotations=… top_task_s=[…] first_row_s=[…] top10_s=[…] all_s=[…] ls_rescore_first_row_s=<median>
        ls_rescore_top10_s=<median> ls_rescore_all_s=<median, or nan without --full>
    ls_rescore_s=<median seconds, annotation sent -> the top task's new score shown>

    python benchmarks/ls_rescore.py [--tasks 1000] [--annotations 5] [--gap 3] [--full]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def load_harness() -> Any:
    spec = importlib.util.spec_from_file_location("bayesal_ls_harness", ROOT / "tests" / "labelstudio" / "harness.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--annotations", type=int, default=5)
    ap.add_argument("--gap", type=float, default=3.0, help="seconds between the 10 rows current and the next annotation")
    ap.add_argument("--full", action="store_true", help="wait for every score and the deletions before the next annotation")
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="seconds to wait for the rows to be current (then counted as inf)")
    args = ap.parse_args(argv)

    os.environ.setdefault("BAYESAL_LABEL_STUDIO", str(ROOT / ".lsvenv" / "bin" / "label-studio"))
    if (ROOT / ".lsvenv" / "migrated" / "label_studio.sqlite3").is_file():
        os.environ.setdefault("BAYESAL_LABEL_STUDIO_DB_TEMPLATE", str(ROOT / ".lsvenv" / "migrated"))
    harness = load_harness()
    exe = harness.label_studio_executable()
    if exe is None:
        print(f"Label Studio is not installed: set {harness.ENV_VAR} (make labelstudio-env)", file=sys.stderr)
        return 2

    from bayesal.data.backbones import get_backbone
    from bayesal.labelstudio import BackendSettings, LabelStudioBackend, LabelStudioClient, PredictionPusher, create_app

    texts = [f"{text} (report {i})" for i in range(args.tasks) for text, _ in [harness.TEXTS[i % len(harness.TEXTS)]]]
    truth = [label for i in range(args.tasks) for _, label in [harness.TEXTS[i % len(harness.TEXTS)]]]
    k_rows = min(10, args.tasks)
    with tempfile.TemporaryDirectory(prefix="bayesal-ls-rescore-") as tmp:
        t0 = time.monotonic()
        ls = harness.LabelStudio.start(exe, Path(tmp) / "ls")
        print(f"Label Studio started in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        backend = LabelStudioBackend(Path(tmp) / "state", BackendSettings(seed=0),
                                     backbones={"text": get_backbone("minilm", max_seq_length=128)})
        pusher = PredictionPusher(backend, LabelStudioClient(ls.url, harness.TOKEN))
        tol = pusher.tolerance + 1e-6  # the scores shown are within the pusher's tolerance of the current ones
        marks: dict[str, float] = {}  # when the last webhook arrived at the backend and was answered

        def applied(uid: str, action: str) -> None:
            if action.startswith("ANNOTATION"):
                marks.setdefault("applied", time.monotonic())

        backend.subscribe(applied)
        app = create_app(backend, pusher=pusher)

        @app.middleware("http")
        async def _webhook_times(request: Any, call_next: Any) -> Any:
            webhook = request.url.path == "/webhook" and "in" not in marks
            if webhook:
                marks["in"] = time.monotonic()
            response = await call_next(request)
            if webhook:
                marks["out"] = time.monotonic()
            return response

        server = harness.ThreadedServer(app).start()
        try:
            project = ls.create_project("bayesal rescore benchmark", harness.TEXT_CONFIG)
            tasks = ls.import_tasks(project, [{"data": {"text": t}} for t in texts])
            label_of = dict(zip(tasks, truth))
            view = ls.api("POST", "/api/dm/views", json={"project": project, "data": {"ordering": ["-tasks:predictions_score"]}})["id"]

            def rows(n: int) -> list[tuple[int, float | None]]:
                out = ls.api("GET", "/api/tasks", params={"view": view, "project": project, "page_size": n})
                return [(t["id"], t["predictions_score"]) for t in (out["tasks"] if isinstance(out, dict) else out)]

            def expected() -> dict[int, float]:
                results, _ = backend.predict([{"id": t, "data": {"text": x}} for t, x in zip(tasks, texts)], str(project), None)
                return {t: r["score"] for t, r in zip(tasks, results)}

            def shows(task: int, want: dict[int, float]) -> bool:
                """``task``'s Prediction score (the mean over its predictions of the ML backend's model version,
                as the Data Manager computes it) is its new score."""
                versions = {m.get("model_version") for m in ls.api("GET", "/api/ml", params={"project": project})}
                mine = [p["score"] for p in ls.api("GET", "/api/predictions/", params={"task": task})
                        if p.get("model_version") in versions and p.get("score") is not None]
                return bool(mine) and abs(sum(mine) / len(mine) - want[task]) <= tol

            def current(seen: list[tuple[int, float | None]], want: dict[int, float], n: int) -> bool:
                """The first ``n`` rows are tasks among the ``n`` highest new scores, showing them."""
                bar = sorted(want.values(), reverse=True)[n - 1]
                return len(seen) >= n and all(
                    shown is not None and abs(shown - want[t]) <= tol and want[t] >= bar - tol for t, shown in seen[:n])

            def close(a: dict[int, float | None], b: dict[int, float]) -> bool:
                return a.keys() == b.keys() and all(a[k] is not None and abs(a[k] - b[k]) <= tol for k in b)  # type: ignore[operator]

            def wait(what: str, k: int, start: float, done: Any, limit: float, pause: float = 0.02) -> float:
                """Seconds from ``start`` until ``done()``; inf (and a note) after ``limit`` seconds."""
                while not done():
                    if time.monotonic() - start > limit:
                        print(f"annotation {k + 1}: {what} not current within {limit} s; push status {pusher.status()}",
                              file=sys.stderr)
                        return math.inf
                    time.sleep(pause)
                return time.monotonic() - start

            t0 = time.monotonic()
            ls.connect_backend(project, server.url)
            while not pusher.flush(1) or not close(dict(rows(args.tasks + 10)), expected()):
                if time.monotonic() - t0 > 600:
                    raise RuntimeError(f"the first push did not arrive: {pusher.status()}")
            print(f"connect -> {args.tasks} tasks scored (MiniLM features of every task, first push): "
                  f"{time.monotonic() - t0:.1f} s", file=sys.stderr)

            times: list[float] = []
            row_times: list[float] = []
            top_times: list[float] = []
            full_times: list[float] = []
            for k in range(args.annotations):
                task = rows(1)[0][0]
                marks.clear()
                start = time.monotonic()
                ls.annotate(task, label_of[task])
                acked = time.monotonic() - start
                want = expected()
                best = max(want, key=want.__getitem__)
                times.append(wait("the top task's score", k, start, lambda want=want, best=best: shows(best, want), args.timeout))
                row_times.append(wait("the first row", k, start, lambda want=want: current(rows(1), want, 1), args.timeout))
                head_s = pusher.status().get("last_head_s")
                top_times.append(wait(f"the first {k_rows} rows", k, start, lambda want=want: current(rows(k_rows), want, k_rows),
                                      args.timeout))
                line = (f"annotation {k + 1}: acknowledged {acked:.3f} s (webhook at the backend "
                        f"{marks.get('in', start) - start:.3f}-{marks.get('out', start) - start:.3f} s, applied "
                        f"{marks.get('applied', start) - start:.3f} s; head written {head_s} s after), the top task's new "
                        f"score shown {times[-1]:.3f} s, first row current {row_times[-1]:.3f} s, first {k_rows} rows "
                        f"{top_times[-1]:.3f} s")
                if args.full:
                    full_times.append(wait("every score", k, start, lambda want=want: close(dict(rows(args.tasks + 10)), want),
                                           3600, 0.2))
                    pusher.flush(1800)  # the superseded predictions deleted
                    stored = ls.predictions(project)
                    line += (f", every score {full_times[-1]:.3f} s, superseded predictions deleted after "
                             f"{time.monotonic() - start:.1f} s (stored {len(stored)})")
                    if len(stored) != args.tasks:
                        raise RuntimeError(f"{len(stored)} predictions stored for {args.tasks} tasks")
                else:
                    time.sleep(args.gap)
                status = pusher.status()
                print(line + f"; so far {status['predictions_created']} created, {status['predictions_updated']} updated, "
                      f"{status['predictions_deleted']} deleted", file=sys.stderr)
            pusher.flush(5)
        finally:
            server.stop()
            ls.stop()
    every = f"{statistics.median(full_times):.3f}" if full_times else "nan"
    print(f"tasks={args.tasks} annotations={len(times)} top_task_s={[round(t, 3) for t in times]} "
          f"first_row_s={[round(t, 3) for t in row_times]} top10_s={[round(t, 3) for t in top_times]} "
          f"all_s={[round(t, 3) for t in full_times]} ls_rescore_first_row_s={statistics.median(row_times):.3f} "
          f"ls_rescore_top10_s={statistics.median(top_times):.3f} ls_rescore_all_s={every}")
    print(f"ls_rescore_s={statistics.median(times):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
