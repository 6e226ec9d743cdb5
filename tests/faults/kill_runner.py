"""SIGKILL trials, run as a subprocess: ``python kill_runner.py run|session WORKDIR TRIALS SEED``.

Imports bayesal once, then per trial forks a child that works (``run``: ``run_experiment`` appending
to a results file; ``session``: a labeling session telling labels) and acknowledges on a pipe every
run appended / label told. The runner SIGKILLs the child after a random delay and checks, in a fresh
forked child, that everything acknowledged is still there: lost result rows (``run``: compared with
an uninterrupted reference run, after a final resume) or lost labels (``session``). Prints one JSON
line with the counts. The runner itself never computes (only forks), so forking stays safe.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

torch.set_num_threads(1)

from bayesal.data import from_arrays  # noqa: E402
from bayesal.exceptions import BayesalError  # noqa: E402
from bayesal.experiments import runner as runner_mod  # noqa: E402
from bayesal.experiments.results import read_results  # noqa: E402
from bayesal.laplace import HeadConfig, PosteriorOptions  # noqa: E402

STRATEGIES = ["random", "margin"]
SEEDS = [0, 1, 2]
METRICS = ["accuracy", "nll", "brier", "ece"]
N, D, C = 240, 5, 3


def _data() -> Any:
    rng = np.random.default_rng(0)
    y = np.arange(N) % C
    x = rng.normal(size=(N, D)) + 2.0 * np.eye(C, D)[y]
    return x.astype(np.float32), y


CHILD_LIMIT_S = 120.0  # a child still running this long (not killed on purpose) is hung


def in_child(fn: Callable[[], Any], kill_after: float | None = None, acks: list[str] | None = None) -> Any:
    """Run ``fn(ack)`` in a forked child; ``ack(text)`` sends a line to the parent. Returns the
    child's JSON result, ``None`` when it was killed after ``kill_after`` seconds, or
    ``{"error": "hang"}`` when it ran past :data:`CHILD_LIMIT_S`."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            def ack(text: str) -> None:
                os.write(w, (text + "\n").encode())

            result = fn(ack)
            ack("RESULT " + json.dumps(result))
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            try:
                os.write(w, f"ERROR {type(err).__name__}: {err}\n".replace("\n", " ").encode() + b"\n")
            except OSError:
                pass
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    deadline = time.monotonic() + (kill_after if kill_after is not None else CHILD_LIMIT_S)
    chunks = []
    hung = False
    while True:
        wait = None if deadline == float("inf") else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([r], [], [], wait)
        if not ready:  # time is up: the planned kill, or a hung child
            hung = kill_after is None
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = float("inf")
            continue
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    if hung:
        return {"error": "hang"}
    result: Any = None
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
        elif line.startswith("ERROR "):
            result = {"error": line[6:]}
        elif acks is not None and line:
            acks.append(line)
    return result


# -------------------------------------------------------------------------------------- run
def _run_workload(out: Path) -> Callable[[Callable[[str], None]], Any]:
    def work(ack: Callable[[str], None]) -> Any:
        x, y = _data()
        ds = from_arrays(x, y, name="kill", random_state=0)
        cfg = runner_mod.ALConfig(batch_size=5, cycles=1, candidate_size=40, posterior=PosteriorOptions(head=HeadConfig(epochs=3)))
        real = runner_mod.append_results

        def append(rows: list[dict[str, Any]], path: Any) -> None:
            real(rows, path)
            ack(f"{rows[0]['strategy']} {rows[0]['seed']}")

        runner_mod.append_results = append
        runner_mod.run_experiment(ds, STRATEGIES, cfg, SEEDS, out=out, progress=False)
        return "done"
    return work


def _read_rows(out: Path) -> Callable[[Callable[[str], None]], Any]:
    def read(ack: Callable[[str], None]) -> Any:
        if not out.exists():
            return {}
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            df = read_results(out)
        if not len(df):
            return {}
        return {f"{r.strategy} {int(r.seed)} {int(r.cycle)}": [float(getattr(r, m)) for m in METRICS]
                for r in df.itertuples()}
    return read


def _lost_rows(got: Any, reference: dict[str, list[float]], runs: set[str]) -> int:
    if not isinstance(got, dict) or "error" in got:
        return sum(1 for k in reference if " ".join(k.split()[:2]) in runs) or 1
    return sum(1 for k, v in reference.items() if " ".join(k.split()[:2]) in runs and got.get(k) != v)


def trials_run(workdir: Path, trials: int, rng: random.Random) -> dict[str, Any]:
    ref_out = workdir / "reference.csv"
    _run_workload(workdir / "warm.csv")(lambda text: None)  # warm up here (one thread): children start fast
    t0 = time.monotonic()
    _run_workload(ref_out)(lambda text: None)
    full = time.monotonic() - t0
    reference = _read_rows(ref_out)(lambda text: None)
    all_runs = {f"{s} {k}" for s in STRATEGIES for k in SEEDS}
    lost = kills = acked = errors = hangs = 0
    per_dir = 3  # a few kills per file, then a rerun must finish it
    n_dirs = -(-trials // per_dir)
    for d in range(n_dirs):
        out = workdir / f"r{d}{'.csv' if d % 2 == 0 else '.parquet'}"
        done: set[str] = set()
        for _ in range(per_dir):
            acks: list[str] = []
            # children run slower than the warm parent on a loaded machine: spread the kills wider
            in_child(_run_workload(out), kill_after=rng.uniform(0.0, min(max(4 * full, 0.6), 2.0)), acks=acks)
            kills += 1
            done.update(acks)
            acked += len(acks)
            got = in_child(_read_rows(out))
            hangs += got == {"error": "hang"}
            lost += _lost_rows(got, reference, done)  # every acknowledged run intact, file readable
            print(f"run trial {kills}: {len(acks)} acks, lost so far {lost}", file=sys.stderr, flush=True)
        result = in_child(_run_workload(out))  # a rerun resumes and finishes
        hangs += result == {"error": "hang"}
        errors += result not in ("done", {"error": "hang"})
        lost += _lost_rows(in_child(_read_rows(out)), reference, all_runs)
    return {"kills": kills, "acked_runs": acked, "lost_result_rows": lost, "errors": errors, "hangs": hangs,
            "full_run_s": round(full, 2)}


# ---------------------------------------------------------------------------------- session
NAMES = ["a", "b", "c"]


def _open_session(state_dir: Path) -> Any:
    from bayesal.labeling.session import Session

    x, _ = _data()
    if (state_dir / "labels.jsonl").exists() or (state_dir / "session.state").exists():
        try:
            return Session.resume(state_dir, x)
        except BayesalError:
            return Session.recover(state_dir, x)
    # a fixed prior: the trial is about crash safety, and a cross-validated retrain every 7 labels would
    # spend most of each kill window choosing λ₀
    return Session(x, NAMES, state_dir=state_dir, random_state=0, strategy="margin", retrain_every=7,
                   candidate_size=40, options=PosteriorOptions(prior_precision=1.0, head=HeadConfig(epochs=3)))


def _session_workload(state_dir: Path, seed: int) -> Callable[[Callable[[str], None]], Any]:
    def work(ack: Callable[[str], None]) -> Any:
        rng = np.random.default_rng(seed)
        s = _open_session(state_dir)
        while True:
            avail = s.available_indices()
            if not len(avail):
                s.close()
                return "full"
            i = s.query(1)[0] if rng.random() < 0.5 else int(rng.choice(avail))
            c = int(rng.integers(C))
            s.tell(i, c)
            ack(f"{i} {c}")
    return work


def _session_labels(state_dir: Path) -> Callable[[Callable[[str], None]], Any]:
    def read(ack: Callable[[str], None]) -> Any:
        if not state_dir.exists():
            return {}
        s = _open_session(state_dir)
        labels = {str(k): int(v) for k, v in s.labels.items()}
        s.close()
        return labels
    return read


def trials_session(workdir: Path, trials: int, rng: random.Random) -> dict[str, Any]:
    warm = _open_session(workdir / "warm")  # warm up here (one thread): children start fast
    for k in range(10):
        warm.tell(warm.query(1)[0], k % C)
    warm.close()
    _session_labels(workdir / "warm")(lambda text: None)
    t0 = time.monotonic()
    _session_labels(workdir / "warm")(lambda text: None)
    open_s = time.monotonic() - t0
    lost = kills = acked = hangs = 0
    n_dirs = max(1, trials // 9)
    per_dir = -(-trials // n_dirs)
    for d in range(n_dirs):
        state_dir = workdir / f"s{d}"
        told: dict[str, int] = {}
        for t in range(per_dir):
            acks: list[str] = []
            in_child(_session_workload(state_dir, d * 1000 + t), kill_after=open_s + rng.uniform(0.0, 0.5), acks=acks)
            kills += 1
            for line in acks:
                i, c = line.split()
                told[i] = int(c)
            acked += len(acks)
            got = in_child(_session_labels(state_dir))
            hangs += got == {"error": "hang"}
            if not isinstance(got, dict) or "error" in got:
                lost += len(told) or 1
                continue
            lost += sum(1 for i, c in told.items() if got.get(i) != c)
    return {"kills": kills, "acked_labels": acked, "lost_labels": lost, "hangs": hangs}


def main() -> None:
    workload, workdir, trials, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    result = trials_run(workdir, trials, rng) if workload == "run" else trials_session(workdir, trials, rng)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
