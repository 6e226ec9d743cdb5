"""The whole fault/fuzz campaign: fuzzed files for every reader and the CLI, a full disk and read-only
directories for every write path, SIGKILL trials of ``bayesal run`` and of a labeling session, and the
service surfaces (``tests/faults/surfaces.py``): the Label Studio backend's endpoints and serve's API under
hypothesis-generated JSON, pool files and shard folders, session headers, foreign files given as results
files, a full disk under serve, the backend and the results writer, and update batch sizes up to 100,000.

Last line (an interface): ``inputs_tried=<> clear_errors=<> other_exceptions=<> silent_drops=<> hangs=<>
lost_labels=<> lost_result_rows=<> surfaces=<>``. Target: inputs_tried >= 20000 over >= 8 surfaces and
every count but clear_errors 0.

    PYTHONPATH=src python benchmarks/faults.py [--inputs 1000] [--kills 51]
    PYTHONPATH=src python benchmarks/faults.py --inputs 20 --disk-faults 20 --kills 0   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAULTS = ROOT / "tests" / "faults"
sys.path.insert(0, str(FAULTS))

from families import READERS, faults_disk  # noqa: E402
from faultkit import Tally  # noqa: E402
from surfaces import SURFACES  # noqa: E402


def kill_trials(workload: str, workdir: Path, n: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(FAULTS / "kill_runner.py"), workload, str(workdir), str(n), "11"],
                          capture_output=True, text=True, timeout=1200, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"kill trials ({workload}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=1000, help="generated inputs per reader (default 1000)")
    ap.add_argument("--disk-faults", type=int, default=300, help="injected disk faults (default 300)")
    ap.add_argument("--kills", type=int, default=51, help="SIGKILL trials per workload (default 51; 0: none)")
    ap.add_argument("--only", default=None, help="comma-separated families to run (default: all)")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    total = Tally()
    surfaces = 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, family in {**READERS, **SURFACES}.items():
            if only is not None and name not in only:
                continue
            t0 = time.perf_counter()
            tally = Tally()
            (work / name).mkdir()
            family(tally, work / name, args.inputs)
            print(f"{name:16s} {tally.line()} correct={tally.correct} ({time.perf_counter() - t0:.0f}s)", flush=True)
            total.add(tally)
            surfaces += 1
        if only is None or "disk_faults" in only:
            t0 = time.perf_counter()
            tally = Tally()
            (work / "disk").mkdir()
            faults_disk(tally, work / "disk", args.disk_faults)
            print(f"{'disk_faults':16s} {tally.line()} correct={tally.correct} ({time.perf_counter() - t0:.0f}s)",
                  flush=True)
            total.add(tally)
            surfaces += 1
        for workload in ("run", "session") if args.kills > 0 else ():
            if only is not None and f"kill_{workload}" not in only:
                continue
            t0 = time.perf_counter()
            res = kill_trials(workload, work / f"kill_{workload}", args.kills)
            total.inputs_tried += res["kills"]
            total.lost_result_rows += res.get("lost_result_rows", 0)
            total.lost_labels += res.get("lost_labels", 0)
            total.other_exceptions += res.get("errors", 0)
            total.hangs += res.get("hangs", 0)
            print(f"{'kill_' + workload:16s} {json.dumps(res)} ({time.perf_counter() - t0:.0f}s)", flush=True)
            surfaces += 1
    for kind, items in total.examples.items():
        for item in items:
            print(f"  {kind}: {item[:300]}")
    print("(the machine is shared: times above are noisy)")
    print(f"{total.line()} surfaces={surfaces}")


if __name__ == "__main__":
    main()
