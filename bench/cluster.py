"""The cluster's scaling times under Ray's real autoscaler (v2, as ``ray up`` runs it),
with `cluster.yaml`'s node types on a fake cloud on this machine: the harness of
``tests/ml_backend/autoscaler/`` (each GPU "instance" is a Ray node process here, so a
node launch is seconds, not EC2's minute; docs/operations.md adds AWS's stages).

Scenarios, in order on one cluster (serve_config.yaml with demo weights on the CPU,
its delays shortened to seconds; the web backend and its dispatcher on the "head"):

* scale-up: a job at zero -> GPU node up, replica running, first progress, done;
* scale-down: replica to zero, then its node removed (idle timeout 6 s here);
* fallback: spot refused -> an on-demand node, then spot again once spot is back;
* node loss: a node SIGKILLed mid-job -> replacement node, the job done once;
* burst: ``--jobs`` jobs at once at zero -> when each replica count was reached.

  python bench/cluster.py [--runs 1] [--jobs 16]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' harness

from tests.ml_backend.autoscaler import scenarios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="clusters, one after another")
    parser.add_argument("--jobs", type=int, default=16, help="jobs in the burst")
    args = parser.parse_args()
    for run in range(args.runs):
        started = time.monotonic()
        rig = scenarios.Rig.start(Path(tempfile.mkdtemp(prefix="clipgan-bench-cluster-")))
        try:
            print(f"# run {run + 1}: cluster up in {time.monotonic() - started:.1f} s")
            figures = {
                "scale-up (cold)": scenarios.cold_start(rig),
                "scale-down (idle)": scenarios.idle(rig),
                "spot shortage": scenarios.spot_shortage(rig),
                "node loss": scenarios.node_loss(rig),
                "burst": scenarios.burst(rig, jobs=args.jobs),
            }
        finally:
            rig.stop()
        for name, values in figures.items():
            print(f"{name:20} {json.dumps(values)}")


if __name__ == "__main__":
    main()
