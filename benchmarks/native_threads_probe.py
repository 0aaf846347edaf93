"""Why the native executor's 2-thread speed-up on the ResNet-class CNN differs between processes: one
process times the model at 1 and 2 threads block after block and records, per block, how many CPUs'
worth of work the machine's *other* processes did meanwhile (/proc/stat busy time minus this process's
own CPU time), then where each of its threads last ran and how much CPU each got (/proc/self/task).

Run it in several fresh processes (`for i in 1 2 3 4; do python native_threads_probe.py --seconds 6;
done`): a speed-up near 1.0 with `foreign_cpus` near 1 means the second core was busy with someone
else's work, not that the split failed; a speed-up near 1.0 on a quiet machine (foreign near 0) with the
worker's CPU time far below the caller's points at the scheduler keeping both threads on one CPU.
Linux only (/proc)."""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from report import emit  # benchmarks/report.py, beside this script

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.compilers.edge_cnns builds the ResNet

from edgefleet.compilers.targets.native import onnx_to_graph
from edgefleet.cpp_ext import graph_native
from tests.compilers import edge_cnns

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def busy_cpu_seconds() -> float:
    """CPU seconds all CPUs spent busy (everything but idle and iowait) since boot."""
    fields = [int(t) for t in open("/proc/stat").readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / CLOCK_TICKS


def threads() -> list[dict]:
    """This process's threads: id, the CPU each last ran on, and its CPU seconds."""
    rows = []
    for tid in sorted(os.listdir("/proc/self/task"), key=int):
        fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        rows.append({"tid": int(tid), "last_cpu": int(fields[36]),
                     "cpu_s": (int(fields[11]) + int(fields[12])) / CLOCK_TICKS})
    return rows


def median_us(executor: graph_native.GraphExecutor, feed: dict, runs: int) -> float:
    executor.run(feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        executor.run(feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e6)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to alternate blocks")
    parser.add_argument("--runs", type=int, default=40, help="calls per block and thread count")
    args = parser.parse_args(argv)
    buffer = io.BytesIO()
    torch.onnx.export(edge_cnns.build("resnet").eval(), torch.zeros(1, 3, edge_cnns.SIZE, edge_cnns.SIZE), buffer,
                      input_names=["image"], output_names=["logits"], dynamo=False)
    graph = onnx_to_graph(onnx.load_from_string(buffer.getvalue()))[0]
    one, two = graph_native.load_executor(graph, 1), graph_native.load_executor(graph, 2)
    feed = {"image": np.random.default_rng(0).standard_normal((1, 3, edge_cnns.SIZE, edge_cnns.SIZE), np.float32)}
    blocks = []
    start = time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        busy0, own0, wall0 = busy_cpu_seconds(), sum(os.times()[:2]), time.perf_counter()
        t1, t2 = median_us(one, feed, args.runs), median_us(two, feed, args.runs)
        busy1, own1, wall1 = busy_cpu_seconds(), sum(os.times()[:2]), time.perf_counter()
        foreign = ((busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)
        blocks.append({"t_s": round(wall0 - start, 2), "one_us": round(t1, 1), "two_us": round(t2, 1),
                       "speedup": round(t1 / t2, 3), "foreign_cpus": round(foreign, 2)})
    report = {"benchmark": "native_threads_probe", "pid": os.getpid(), "affinity": sorted(os.sched_getaffinity(0)),
              "median_speedup": float(np.median([b["speedup"] for b in blocks])),
              "median_foreign_cpus": float(np.median([b["foreign_cpus"] for b in blocks])),
              "threads": threads(), "blocks": blocks}
    emit(report)
    return report


if __name__ == "__main__":
    main()
