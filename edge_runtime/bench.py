"""The benchmark engine behind `edgefleet bench`: latency, throughput, memory and FLOP/s of a bundle.

    report = run_bench("digits/", trust, BenchOptions(batches=(1, 8, 32), compare_raw=True))
    for table in render_tables(report):          # edgefleet.edge_runtime.bench_tables
        console.print(table)

MLPerf single-stream style: one request at a time, each timed on its own, per batch size.

Inputs: the bundle's golden inputs, repeated or cut along the batch axis to the batch size (real
values, so data-dependent kernels behave as in service); without golden examples, seeded random data
of the schema's dtype with every symbolic dimension set to the batch size.

Stop rule, per batch size (warm-up first: at least 10 calls and 0.2 s, at most 5 s, never counted):
- neither `runs` nor `duration`: 1024 measured runs, stopping early at 60 s for a slow model;
- `runs=N`: N runs, still stopping at 60 s;
- `duration=S`: runs for S seconds, however many runs that is (at least one);
- both: each is a minimum, as MLPerf's min_query_count and min_duration: stop once N runs are done
  and S seconds have passed, or at max(S, 60 s) if the N runs take longer than that.
With `compare_raw`, a "run" is one Predictor.predict and one bare InferenceSession.run, alternating
which goes first so neither profits from the other warming the caches.

The report (JSON-serialisable; times in ms unless the key says seconds):
    kind, report_version, created_at
    bundle            {name, version, root, artifact: {target, backend, format, path, sha256, size}}
    backend, threads  the backend that ran it (options.backend None: the first of the bundle's own order,
                      edge_runtime/backends, that could); threads as asked (None: the runtime's default)
    options           the BenchOptions; stop_rule {min_runs, min_seconds, max_seconds}
    input_source      "golden" or "random"
    flops_per_sample  from the bundle's artifact entry (the exporter's count), or None
    load_seconds      Predictor construction: open, verify signature and hashes, load the backend
    raw_load_seconds  the bare session's construction (compare_raw only, else None)
    first_inference_ms  the first call after loading, at the first batch size, before warm-up
    quality           the task's agreement with the bundle's golden outputs, this backend's outputs on the
                      golden inputs in one call (core/task_quality.py): {task, examples, and per task
                      top1_agreement | max_abs_error, max_rel_error | min_cosine, max_abs_error |
                      count_agreement, max_score_error, score_threshold | max_abs_error}; None without
                      golden examples; {task, error} when that run fails
    results           one per batch size:
        batch, runs, warmup_runs, wall_seconds, stopped_by ("target" or "time_cap")
        latency_ms    {p50, p90, p95, p99, p99_9, mean, std, min, max}
        throughput    {calls_per_s, samples_per_s} = 1 / mean latency, times the batch size
        gflops_per_s  flops_per_sample * batch / mean latency / 1e9, or None
        raw           {runs, latency_ms, throughput} of the bare session (compare_raw only)
        overhead_ratio, overhead_ratio_mean   predictor p50 / raw p50, and the same of the means
    memory            {rss_before_load_bytes, rss_after_load_bytes, peak_rss_bytes, peak_rss_mb}; the
                      whole process (with compare_raw, both sessions), None where not readable
    machine           edgefleet.edge_runtime.machine.describe_machine()

Several backends side by side (`edgefleet bench --backend a,b,c`): `check_entries` first refuses, as a
usage error, a bundle that does not verify and a name that is neither a backend of this runtime nor a
target compiled into the bundle; each backend then runs in a process of its own. One that cannot run
the bundle (its runtime is not installed, the bundle has no artifact it runs, the load fails) becomes
`refused_report(entry, reason)`, {kind, report_version, entry, status: "refused", reason}, a row of
the comparison, and the others go on; a measured report there has status "measured".
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.core.bundle import Bundle
from edgefleet.core.canonical import format_time, utc_now
from edgefleet.core.errors import BundleError, EdgefleetError
from edgefleet.core.schema import TensorSpec
from edgefleet.core.signing import TrustStore
from edgefleet.core.task_quality import golden_quality
from edgefleet.edge_runtime.machine import current_rss_bytes, describe_machine, peak_rss_bytes
from edgefleet.edge_runtime.predictor import Predictor

log = logging.getLogger(__name__)

DEFAULT_RUNS = 1024
TIME_CAP_SECONDS = 60.0
WARMUP_RUNS, WARMUP_SECONDS, WARMUP_MAX_SECONDS = 10, 0.2, 5.0
PROGRESS_EVERY_NS = 100_000_000  # report progress at most ten times a second
PERCENTILES = {"p50": 50, "p90": 90, "p95": 95, "p99": 99, "p99_9": 99.9}

Progress = Callable[[str, float], None]


class BenchError(EdgefleetError):
    """The benchmark cannot run as asked (bad options, or --compare-raw on a non-ONNX artifact)."""


@dataclass(frozen=True)
class BenchOptions:
    backend: str | None = None  # None: the bundle's own order (edge_runtime/backends, default_backends)
    batches: tuple[int, ...] = (1,)
    threads: int | None = None
    runs: int | None = None  # measured runs per batch size
    duration: float | None = None  # seconds per batch size
    compare_raw: bool = False
    seed: int = 0


@dataclass(frozen=True)
class StopRule:
    min_runs: int
    min_seconds: float
    max_seconds: float

    @classmethod
    def of(cls, options: BenchOptions) -> StopRule:
        runs, duration = options.runs, options.duration
        if duration is None:
            return cls(runs or DEFAULT_RUNS, 0.0, TIME_CAP_SECONDS)
        if runs is None:
            return cls(1, duration, duration)
        return cls(runs, duration, max(duration, TIME_CAP_SECONDS))

    def fraction(self, runs: int, seconds: float) -> float:
        done = min(runs / self.min_runs, seconds / self.min_seconds if self.min_seconds else 1.0)
        return min(1.0, max(done, seconds / self.max_seconds))


def run_bench(
    bundle: str | Path | Bundle, trust: TrustStore, options: BenchOptions, progress: Progress | None = None
) -> dict:
    """Loads the bundle once and measures every batch size in options; returns the report (see above)."""
    _check(options)
    rule = StopRule.of(options)
    tell = progress or (lambda message, fraction: None)
    tell("loading the bundle", 0.0)
    rss_before = current_rss_bytes()
    if options.backend is None:
        from edgefleet.edge_runtime.backends import default_backends

        bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        backends = default_backends(bundle)
    else:
        backends = [options.backend]
    predictor = Predictor(bundle, backends=backends, threads=options.threads, trusted_keys=trust)
    raw = None
    try:
        rss_after = current_rss_bytes()
        raw, raw_load_seconds = _raw_session(predictor, options) if options.compare_raw else (None, None)
        golden = _golden(predictor.bundle)
        inputs, source = _input_maker(predictor.bundle, options.seed, golden and golden[0])
        quality = _quality(predictor, golden)
        feed = inputs(options.batches[0])
        started = time.perf_counter()
        predictor.predict(feed)
        first_ms = (time.perf_counter() - started) * 1e3
        flops = predictor.artifact.get("flops_per_sample")
        results = []
        for index, batch in enumerate(options.batches):
            def tick(message: str, fraction: float, index: int = index) -> None:
                tell(message, (index + fraction) / len(options.batches))

            result = _bench_batch(predictor, raw, inputs(batch), batch, rule, tick)
            mean_s = result["latency_ms"]["mean"] / 1e3
            result["gflops_per_s"] = flops * batch / mean_s / 1e9 if flops and mean_s > 0 else None
            results.append(result)
    finally:
        predictor.close()
        del raw
    # the kernel's high-water mark can lag the samples taken above by a few KiB: the peak includes them
    peak = max((v for v in (peak_rss_bytes(), rss_before, rss_after) if v is not None), default=None)
    tell("done", 1.0)
    return {
        "kind": "edgefleet-bench",
        "report_version": 1,
        "created_at": format_time(utc_now()),
        "bundle": _describe_bundle(predictor),
        "backend": predictor.backend_name,
        "threads": options.threads,
        "options": {**dataclasses.asdict(options), "batches": list(options.batches)},
        "stop_rule": dataclasses.asdict(rule),
        "input_source": source,
        "flops_per_sample": flops,
        "load_seconds": predictor.load_seconds,
        "raw_load_seconds": raw_load_seconds,
        "first_inference_ms": first_ms,
        "quality": quality,
        "results": results,
        "memory": {
            "rss_before_load_bytes": rss_before,
            "rss_after_load_bytes": rss_after,
            "peak_rss_bytes": peak,
            "peak_rss_mb": round(peak / 2**20, 1) if peak is not None else None,
        },
        "machine": describe_machine(),
    }


def check_entries(bundle: str | Path | Bundle, trust: TrustStore, entries: Sequence[str]) -> None:
    """BenchError unless the bundle verifies and each entry names a backend or a target of the bundle."""
    from edgefleet.edge_runtime.backends import REGISTRY

    if not entries:
        raise BenchError("no backend named: pass --backend NAME[,NAME...]")
    opened = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    opened.verify(trust)
    targets = sorted({a["target"] for a in opened.artifacts if a.get("target")})
    for entry in entries:
        if entry not in REGISTRY and entry not in targets:
            raise BenchError(f"--backend {entry}: unknown backend {entry!r}: not a backend "
                             f"({', '.join(sorted(REGISTRY))}) nor a target compiled into this bundle "
                             f"({', '.join(targets)})")


def refused_report(entry: str, reason: str) -> dict:
    """A backend that could not run the bundle, as an entry of a side-by-side comparison."""
    return {"kind": "edgefleet-bench", "report_version": 1, "entry": entry, "status": "refused", "reason": reason}


def _check(options: BenchOptions) -> None:
    if not options.batches or any(int(b) != b or b < 1 for b in options.batches):
        raise BenchError(f"batch sizes must be positive integers, got {list(options.batches)}")
    if options.runs is not None and options.runs < 1:
        raise BenchError(f"runs must be at least 1, got {options.runs}")
    if options.duration is not None and not options.duration > 0:
        raise BenchError(f"duration must be a positive number of seconds, got {options.duration}")
    if options.threads is not None and options.threads < 1:
        raise BenchError(f"threads must be at least 1, got {options.threads}")


def _raw_session(predictor: Predictor, options: BenchOptions) -> tuple[object, float]:
    """A bare InferenceSession on the Predictor's artifact with the backend's own session options."""
    artifact = predictor.artifact
    if predictor.backend_name != "onnxruntime" or artifact.get("format") not in ("onnx", "ort"):
        raise BenchError(
            "--compare-raw times the Predictor against a bare onnxruntime session, so it needs the "
            f"onnxruntime backend on an ONNX artifact; got backend {predictor.backend_name!r} on "
            f"{artifact['path']} (format {artifact.get('format')!r})"
        )
    import onnxruntime as ort

    from edgefleet.edge_runtime.backends.onnxruntime import session_options

    started = time.perf_counter()
    session = ort.InferenceSession(
        str(predictor.artifact_path),
        session_options(options.threads),
        providers=artifact.get("options", {}).get("providers") or ["CPUExecutionProvider"],
    )
    return session, time.perf_counter() - started


# inputs ---------------------------------------------------------------------------------------------------
def _input_maker(bundle: Bundle, seed: int, golden: dict[str, np.ndarray] | None
                 ) -> tuple[Callable[[int], dict[str, np.ndarray]], str]:
    """A function batch -> feed, and where its values come from ("golden" or "random")."""
    specs = bundle.inputs
    symbol = next((d for s in specs for d in s.shape if isinstance(d, str)), None)
    # Fixed shapes: the leading axis of the first input is then the only batch size the model takes.
    fixed = None if symbol is not None else (specs[0].shape[0] if specs[0].shape else 1)

    def make(batch: int) -> dict[str, np.ndarray]:
        if fixed is not None and batch != fixed:
            raise BenchError(
                f"bundle {bundle.name} has fixed input shapes: it runs batch {fixed} only, not {batch}"
            )
        if golden is not None:
            return {s.name: _repeat(golden[s.name], s, symbol, batch) for s in specs}
        rng = np.random.default_rng([seed, batch])
        return {s.name: _random(s, batch, rng) for s in specs}

    return make, "golden" if golden is not None else "random"


def _golden(bundle: Bundle) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
    """The golden (inputs, outputs), or None without them or when they cannot be read."""
    if not bundle.manifest.get("golden"):
        return None
    try:
        inputs, outputs, _tolerance = bundle.golden()
    except (BundleError, KeyError, OSError, ValueError) as err:
        log.warning("bundle %s: golden examples unreadable (%s); benchmarking on random data", bundle.name, err)
        return None
    return inputs, outputs


def _quality(predictor: Predictor, golden: tuple[dict, dict] | None) -> dict | None:
    """The task's quality fields of this backend's outputs on the golden inputs (core/task_quality.py);
    None without golden examples; {"task", "error"} when the run or the comparison fails."""
    if golden is None:
        return None
    interface = predictor.bundle.manifest["interface"]
    try:
        got = predictor.predict(golden[0])
        return golden_quality(interface, predictor.bundle.outputs, golden[1], got)
    except EdgefleetError as err:
        log.warning("bundle %s: golden quality not measured: %s", predictor.bundle.name, err)
        return {"task": interface.get("task") or "other", "error": str(err)}


def _repeat(values: np.ndarray, spec: TensorSpec, symbol: str | None, batch: int) -> np.ndarray:
    """Golden values repeated (or cut) to `batch` along every axis named like the batch axis."""
    for axis, dim in enumerate(spec.shape):
        if dim == symbol and axis < values.ndim and values.shape[axis] > 0:
            values = np.take(values, np.arange(batch) % values.shape[axis], axis=axis)
    return np.ascontiguousarray(values)


def _random(spec: TensorSpec, batch: int, rng: np.random.Generator) -> np.ndarray:
    shape = tuple(batch if isinstance(d, str) else d for d in spec.shape)
    dtype = np.dtype(spec.dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":  # bytes: their whole range (pixels); wider: 0..9, valid indices and token ids
        high = int(np.iinfo(dtype).max) if dtype.itemsize == 1 else 9
        return rng.integers(0, high, size=shape, endpoint=True).astype(dtype)
    raise BenchError(f"input {spec.name!r} has dtype {spec.dtype}; the benchmark cannot invent values for it")


# measurement ----------------------------------------------------------------------------------------------
def _bench_batch(predictor: Predictor, raw: object | None, feed: dict, batch: int, rule: StopRule,
                 tick: Callable[[str, float], None]) -> dict:
    predict = predictor.predict
    raw_run = raw.run if raw is not None else None
    tick(f"batch {batch}: warm-up", 0.0)
    warmup = _warm_up(predict, raw_run, feed)
    gc.collect()

    def report(runs: int, seconds: float) -> None:
        tick(f"batch {batch}: {runs} runs", rule.fraction(runs, seconds))

    started = time.perf_counter()
    if raw_run is None:
        times, raw_times = _loop_one(predict, feed, rule, report), None
    else:
        times, raw_times = _loop_pair(predict, raw_run, feed, rule, report)
    wall = time.perf_counter() - started
    stopped_by = "target" if len(times) >= rule.min_runs else "time_cap"
    if stopped_by == "time_cap":
        log.info("batch %d: stopped at %.0f s after %d of %d runs", batch, wall, len(times), rule.min_runs)
    result = {"batch": batch, "warmup_runs": warmup, "wall_seconds": wall, "stopped_by": stopped_by,
              **_distribution(times, batch)}
    if raw_times is not None:
        result["raw"] = _distribution(raw_times, batch)
        ours, theirs = result["latency_ms"], result["raw"]["latency_ms"]
        result["overhead_ratio"] = ours["p50"] / theirs["p50"]
        result["overhead_ratio_mean"] = ours["mean"] / theirs["mean"]
    return result


def _warm_up(predict: Callable, raw_run: Callable | None, feed: dict) -> int:
    runs, started = 0, time.perf_counter()
    while True:
        predict(feed)
        if raw_run is not None:
            raw_run(None, feed)
        runs += 1
        elapsed = time.perf_counter() - started
        if (runs >= WARMUP_RUNS and elapsed >= WARMUP_SECONDS) or elapsed >= WARMUP_MAX_SECONDS:
            return runs


def _loop_one(predict: Callable, feed: dict, rule: StopRule,
              report: Callable[[int, float], None]) -> list[int]:
    """The hot loop: nothing but the call and two clock reads between measurements."""
    clock, times = time.perf_counter_ns, []
    append = times.append
    start = clock()
    enough_at, cap_at = start + int(rule.min_seconds * 1e9), start + int(rule.max_seconds * 1e9)
    min_runs, next_report = rule.min_runs, start + PROGRESS_EVERY_NS
    while True:
        t0 = clock()
        predict(feed)
        t1 = clock()
        append(t1 - t0)
        if (len(times) >= min_runs and t1 >= enough_at) or t1 >= cap_at:
            return times
        if t1 >= next_report:
            report(len(times), (t1 - start) / 1e9)
            next_report = t1 + PROGRESS_EVERY_NS


def _loop_pair(predict: Callable, raw_run: Callable, feed: dict, rule: StopRule,
               report: Callable[[int, float], None]) -> tuple[list[int], list[int]]:
    """Predictor and bare session interleaved; which goes first alternates every iteration."""
    clock, ours, theirs = time.perf_counter_ns, [], []
    start = clock()
    enough_at, cap_at = start + int(rule.min_seconds * 1e9), start + int(rule.max_seconds * 1e9)
    min_runs, next_report, runs = rule.min_runs, start + PROGRESS_EVERY_NS, 0
    while True:
        if runs & 1:
            t0 = clock()
            raw_run(None, feed)
            t1 = clock()
            predict(feed)
            t2 = clock()
            theirs.append(t1 - t0)
            ours.append(t2 - t1)
        else:
            t0 = clock()
            predict(feed)
            t1 = clock()
            raw_run(None, feed)
            t2 = clock()
            ours.append(t1 - t0)
            theirs.append(t2 - t1)
        runs += 1
        if (runs >= min_runs and t2 >= enough_at) or t2 >= cap_at:
            return ours, theirs
        if t2 >= next_report:
            report(runs, (t2 - start) / 1e9)
            next_report = t2 + PROGRESS_EVERY_NS


def time_interleaved(first: Callable[[dict], object], second: Callable[[dict], object], feed: dict,
                     runs: int) -> tuple[dict, dict]:
    """Times two callables on the same feed, alternating call by call, after a warm-up; returns both
    latency distributions (as in the report's results). For side-by-side benchmarks."""
    _warm_up(first, lambda _names, f: second(f), feed)
    ours, theirs = _loop_pair(first, lambda _names, f: second(f), feed, StopRule(runs, 0.0, 600.0),
                              lambda runs, seconds: None)
    return _distribution(ours, 1), _distribution(theirs, 1)


def _distribution(times_ns: list[int], batch: int) -> dict:
    ms = np.asarray(times_ns, dtype=np.float64) / 1e6
    percentiles = np.percentile(ms, list(PERCENTILES.values()))
    latency = {key: float(value) for key, value in zip(PERCENTILES, percentiles, strict=True)}
    latency.update(mean=float(ms.mean()), std=float(ms.std()), min=float(ms.min()), max=float(ms.max()))
    calls_per_s = 1e3 / latency["mean"] if latency["mean"] > 0 else None
    return {
        "runs": len(times_ns),
        "latency_ms": latency,
        "throughput": {
            "calls_per_s": calls_per_s,
            "samples_per_s": calls_per_s * batch if calls_per_s is not None else None,
        },
    }


def _describe_bundle(predictor: Predictor) -> dict:
    bundle, artifact = predictor.bundle, predictor.artifact
    listed = bundle.manifest.get("files", {}).get(artifact["path"], {})
    return {
        "name": bundle.name,
        "version": bundle.version,
        "root": str(bundle.root),
        "artifact": {
            "target": artifact.get("target"),
            "backend": artifact.get("backend"),
            "format": artifact.get("format"),
            "path": artifact["path"],
            "sha256": artifact.get("sha256") or listed.get("sha256"),
            "size": artifact.get("size") or listed.get("size"),
        },
    }
