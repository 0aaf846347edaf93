"""Time from a drift alert to the fleet on the retrained model, by stage: examples/loop_demo.py's scenario (the
one `make demo` shows and tests/cloud/loop/test_loop_run.py checks) run once, as JSON.

    cd benchmarks && python bench_loop.py [--out results/loop.json]

A cloud (embedded broker, SQLite) and four device agents capturing their requests serve the digits CNN (v1,
10 epochs); live traffic turns half its digits brighter by 0.5 and its labels reach the cloud's feedback API
2 s later. A LoopWatcher (what `cloud up --loop` runs) checks the policy's drift trigger every second; until
the policy's 400 labelled rows are there it records nothing (that wait is "alert_to_run_start"), then runs the
policy (examples/loop_fleet.py: scratch retraining, dynamic int8, onnxruntime, offline evaluation, two waves
with a canary accuracy gate observed 8 s).

Printed: drift start -> alert, alert -> run start, the run's stages, alert -> fleet on v2, and the drifted
accuracy per device before and after. One run on a shared machine: the figures describe this run, not a rate.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from loop_demo import run_scenario  # noqa: E402
from report import emit  # noqa: E402

from edgefleet.cloud.digits import build_digits_bundle  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="edgefleet-loop-") as scratch:
        work = Path(scratch)
        with contextlib.redirect_stdout(sys.stderr):
            bundle, public = build_digits_bundle(work / "v1", epochs=10)
        result = run_scenario(work, bundle, public, public.with_suffix(".key"))
    emit({"benchmark": "loop_alert_to_fleet", "scenario": "4 agents, brightness +0.5 on half the traffic, labels "
                                                           "2 s late, scratch retraining, 2 waves with a canary "
                                                           "accuracy gate (8 s)", **result}, args.out)


if __name__ == "__main__":
    main()
