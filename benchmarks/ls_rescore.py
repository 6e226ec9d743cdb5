"""Time from an annotation in Label Studio to the new scores being visible in its Data Manager, with
the backend pushing its predictions (``bayesal labelstudio --label-studio-url … --label-studio-token …``).

A real Label Studio 1.23.2 on 127.0.0.1, started as the integration tests' harness starts it
(``tests/labelstudio/harness.py``: ``BAYESAL_LABEL_STUDIO`` names its ``label-studio`` executable, by
default ``.lsvenv/bin/label-studio``; ``BAYESAL_LABEL_STUDIO_DB_TEMPLATE`` a migrated database, by
default ``.lsvenv/migrated``), a ``--tasks``-task text project (MiniLM features, 3 classes), and the
bayesal backend with a prediction pusher in this process (uvicorn in a thread, default settings:
margin strategy). After connecting the backend (its first push scores every task), the script
annotates, ``--annotations`` times, the task the Data Manager sorts first by prediction score, and
measures from sending the annotation (``POST /api/tasks/<id>/annotations/``: Label Studio answers after
its webhook reached the backend and the update is on disk):

* until the Data Manager's view sorted by prediction score shows, first, a task with the backend's new
  highest score (polled every 20 ms) — ``ls_rescore_s``, the median;
* until every task shows its new score (within the pusher's tolerance, 0.001) — ``ls_rescore_all_s``;
* until the superseded predictions are deleted and the project holds one prediction per task again;
  the next annotation is sent only then.

No *Retrieve predictions* is ever called.

The machine is shared (2 cores, other jobs running): absolute times are noisy. Last two lines::

    tasks=… annotations=… top_s=[…] all_s=[…] ls_rescore_all_s=<median>
    ls_rescore_s=<median seconds, annotation sent -> the new top of the sort visible>

    python benchmarks/ls_rescore.py [--tasks 1000] [--annotations 5]
"""

from __future__ import annotations

import argparse
import importlib.util
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
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one change to show")
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
    with tempfile.TemporaryDirectory(prefix="bayesal-ls-rescore-") as tmp:
        t0 = time.monotonic()
        ls = harness.LabelStudio.start(exe, Path(tmp) / "ls")
        print(f"Label Studio started in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        backend = LabelStudioBackend(Path(tmp) / "state", BackendSettings(seed=0),
                                     backbones={"text": get_backbone("minilm", max_seq_length=128)})
        pusher = PredictionPusher(backend, LabelStudioClient(ls.url, harness.TOKEN))
        tol = pusher.tolerance + 1e-6  # the scores shown are within the pusher's tolerance of the current ones
        server = harness.ThreadedServer(create_app(backend, pusher=pusher)).start()
        try:
            project = ls.create_project("bayesal rescore benchmark", harness.TEXT_CONFIG)
            tasks = ls.import_tasks(project, [{"data": {"text": t}} for t in texts])
            label_of = dict(zip(tasks, truth))
            view = ls.api("POST", "/api/dm/views", json={"project": project, "data": {"ordering": ["-tasks:predictions_score"]}})["id"]

            def top() -> tuple[int, float | None]:
                out = ls.api("GET", "/api/tasks", params={"view": view, "project": project, "page_size": 1})
                first = (out["tasks"] if isinstance(out, dict) else out)[0]
                return first["id"], first["predictions_score"]

            def shown() -> dict[int, float | None]:
                out = ls.api("GET", "/api/tasks", params={"view": view, "project": project, "page_size": args.tasks + 10})
                return {t["id"]: t["predictions_score"] for t in (out["tasks"] if isinstance(out, dict) else out)}

            def expected() -> dict[int, float]:
                results, _ = backend.predict([{"id": t, "data": {"text": x}} for t, x in zip(tasks, texts)], str(project), None)
                return {t: r["score"] for t, r in zip(tasks, results)}

            def close(a: dict[int, float | None], b: dict[int, float]) -> bool:
                return a.keys() == b.keys() and all(a[k] is not None and abs(a[k] - b[k]) <= tol for k in b)  # type: ignore[operator]

            t0 = time.monotonic()
            ls.connect_backend(project, server.url)
            while not pusher.flush(1) or not close(shown(), expected()):
                if time.monotonic() - t0 > 600:
                    raise RuntimeError(f"the first push did not arrive: {pusher.status()}")
            print(f"connect -> {args.tasks} tasks scored (MiniLM features of every task, first push): "
                  f"{time.monotonic() - t0:.1f} s", file=sys.stderr)

            times, full_times = [], []
            for k in range(args.annotations):
                task = top()[0]
                start = time.monotonic()
                ls.annotate(task, label_of[task])
                acked = time.monotonic() - start
                want = expected()
                head = max(want, key=want.__getitem__)
                while True:  # the top of the sort: the task the annotator opens next, with its new score
                    seen = top()
                    if seen[1] is not None and abs(seen[1] - want[head]) <= tol and abs(want[seen[0]] - seen[1]) <= tol:
                        break
                    if time.monotonic() - start > args.timeout:
                        raise RuntimeError(f"annotation {k}: the new top score did not show within {args.timeout} s; "
                                           f"push status {pusher.status()}")
                    time.sleep(0.02)
                seconds = time.monotonic() - start
                times.append(seconds)
                while not close(shown(), want):  # every task's new score
                    if time.monotonic() - start > args.timeout * 10:
                        raise RuntimeError(f"annotation {k}: the Data Manager's scores differ from the backend's; "
                                           f"push status {pusher.status()}")
                    time.sleep(0.2)
                full_times.append(time.monotonic() - start)
                pusher.flush(1800)  # the superseded predictions deleted
                cleaned = time.monotonic() - start
                stored = ls.predictions(project)
                status = pusher.status()
                print(f"annotation {k + 1}: acknowledged {acked:.3f} s, new top score visible {seconds:.3f} s, "
                      f"every score {full_times[-1]:.3f} s, superseded predictions deleted after {cleaned:.1f} s "
                      f"(so far: {status['predictions_created']} created, {status['predictions_updated']} updated, "
                      f"{status['predictions_deleted']} deleted; stored {len(stored)} of versions "
                      f"{sorted({p['model_version'] for p in stored})})", file=sys.stderr)
                if len(stored) != args.tasks:
                    raise RuntimeError(f"{len(stored)} predictions stored for {args.tasks} tasks")
        finally:
            server.stop()
            ls.stop()
    print(f"tasks={args.tasks} annotations={len(times)} top_s={[round(t, 3) for t in times]} "
          f"all_s={[round(t, 3) for t in full_times]} ls_rescore_all_s={statistics.median(full_times):.3f}")
    print(f"ls_rescore_s={statistics.median(times):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
