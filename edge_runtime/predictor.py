"""Predictor: verify a bundle, pick a backend, validate each request, run it.

    predictor = Predictor("digits.tar.gz", backends=["onnxruntime"], trusted_keys=["keys/release.pub"])
    outputs = predictor.predict(pixels)          # dict of output name -> numpy array
    report = predictor.self_test()               # golden examples, before serving

Backend choice is the caller's ordered list, checked up front: the first listed entry that is installed
and can run one of the bundle's artifacts wins. An entry is a backend name ("openvino") or a compile
target's name ("openvino-npu", "onnxruntime-gpu") for exactly that artifact. A backend name takes the
CPU artifact compiled for it (the last compiled wins), else any artifact in a format it runs; artifacts
built for a GPU or NPU are used only when their target is named. Skipping a listed entry is logged and
kept in `fallbacks`, never silent; `describe()` says what was picked and why.

The self-test runs the golden examples (as one batch, and the first alone) and compares them with the
source model's outputs: numerically, within the tolerance the artifact was checked with at compile time
(an fp16 or int8 artifact's own), never less than the bundle's; and, for a classifier, by decision: every
golden example whose top-1 margin exceeds the tie margin must keep its top-1, so a wide numeric tolerance
never passes a flipped decision (the near-tie rule and the tie margin: core/decision.py, the same rule
the compile check applies). The report's `decisions` says how many were compared and agreed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgefleet.core.bundle import Bundle, Verified
from edgefleet.core.decision import compare_decisions, decision_output, tie_margin
from edgefleet.core.errors import BackendError, VerificationError
from edgefleet.core.precision import widen
from edgefleet.core.schema import InputValidator, sample_count, samples_first, take_samples
from edgefleet.core.signing import TrustStore
from edgefleet.edge_runtime.backends import Backend, backend_class, default_backends

if TYPE_CHECKING:
    from edgefleet.edge_runtime.telemetry import TelemetryAggregator

log = logging.getLogger(__name__)

TrustedKeys = TrustStore | Iterable[str | Path]


@dataclass(frozen=True)
class SelfTestReport:
    passed: bool
    examples: int
    max_abs_error: float
    tolerance: dict
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    decisions: dict | None = None  # a classifier's {"compared", "agreed", "near_ties", "tie_margin"}


class Predictor:
    def __init__(
        self,
        bundle: Bundle | str | Path,
        backends: Sequence[str] | None = None,
        threads: int | None = None,
        trusted_keys: TrustedKeys | None = None,
        *,
        installed_version: int | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        """backends: names or targets in order (None: the bundle's own order, `default_backends`: onnxruntime
        for an ONNX artifact first, then each CPU artifact's backend). cache_dir: a writable directory where
        backends that compile at load (OpenVINO) keep their cache."""
        started = time.perf_counter()
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        self.verified: Verified = self.bundle.verify(_trust_store(trusted_keys), installed_version=installed_version)
        validator = InputValidator(self.bundle.inputs)
        self._validate = validator.check  # a plain function: no __call__ frame
        self.threads = threads
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.fallbacks: list[tuple[str, str]] = []
        self.telemetry: TelemetryAggregator | None = None
        if backends is None:
            backends = default_backends(self.bundle)
        self.backend_name, self.artifact, self._backend = self._load_first(list(backends))
        self._run = self._backend.run
        if type(self).predict is Predictor.predict:  # a subclass's own predict must stay in force
            self.predict = validator.guard(self._run)  # type: ignore[method-assign] # as predict below, a call less
        self.load_seconds = time.perf_counter() - started

    @property
    def artifact_path(self) -> Path:
        return self.bundle.path(self.artifact["path"])

    def _load_first(self, names: list[str]) -> tuple[str, dict, Backend]:
        if not names:
            raise BackendError("no backend listed: pass backends=[...] with at least one name")
        targets = {a.get("target"): a for a in self.bundle.artifacts}
        entries = [_parse_entry(entry, targets) for entry in names]  # unknown names fail up front
        for name, (backend_name, target) in zip(names, entries, strict=True):
            try:
                cls = backend_class(backend_name)
            except BackendError as err:  # its runtime is not installed on this device
                self._skip(name, str(err))
                continue
            artifact = _artifact_for(self.bundle.artifacts, backend_name, cls.formats, target)
            if artifact is None:
                self._skip(name, f"bundle has no artifact in a format it runs ({', '.join(cls.formats)})")
                continue
            backend = cls()
            try:
                options = {"threads": self.threads, **artifact.get("options", {})}
                if self.cache_dir is not None:
                    options["cache_root"] = str(self.cache_dir)
                backend.load(self.bundle.path(artifact["path"]), options)
            except Exception as err:  # noqa: BLE001 - any runtime failure means: try the next backend
                self._skip(name, f"failed to load {artifact['path']}: {err}")
                continue
            log.info("bundle %s v%s: backend %s runs %s (target %s, %s)", self.bundle.name, self.bundle.version,
                     backend_name, artifact["path"], artifact.get("target"), artifact.get("precision"))
            return backend_name, artifact, backend
        reasons = "; ".join(f"{n}: {why}" for n, why in self.fallbacks)
        raise BackendError(f"no listed backend can run bundle {self.bundle.name} v{self.bundle.version} ({reasons})")

    def _skip(self, name: str, reason: str) -> None:
        log.warning("backend %s skipped: %s", name, reason)
        self.fallbacks.append((name, reason))

    def describe(self) -> dict:
        """What runs: backend, artifact (target, path, precision, format) and every skipped entry with why."""
        return {
            "backend": self.backend_name, "target": self.artifact.get("target"), "path": self.artifact["path"],
            "format": self.artifact.get("format"), "precision": self.artifact.get("precision"),
            "fallbacks": [{"entry": name, "reason": why} for name, why in self.fallbacks],
        }

    def predict(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """Validates inputs against the schema (SchemaError names what is wrong) and runs the model."""
        return self._run(self._validate(inputs))

    def enable_telemetry(self, aggregator: TelemetryAggregator) -> None:
        """From now on every predict() is observed by the aggregator (one native call per request).

        predict is swapped for an observing version only here, so a Predictor without telemetry pays
        nothing for the feature.
        """
        self.telemetry = aggregator
        validate, run, clock = self._validate, self._run, time.perf_counter_ns
        error = aggregator.error
        if not aggregator.fast_path:
            observe = aggregator.observe

            def predict(inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
                start = clock()
                try:
                    feed = validate(inputs)
                    outputs = run(feed)
                except Exception:
                    error(clock() - start)
                    raise
                observe(feed, outputs, clock() - start)
                return outputs
        else:  # one input, profiled, a classifier: the hot path is one sketch call, without the extra Python frame
            # of aggregator.observe (~60 ns, a fifth of the telemetry budget on an 8 µs model); hence two
            # near-identical closures rather than one. The sketch is read from the aggregator on each call: it
            # swaps in a new one at every window close (its data-quality edges move), and keeps the last feed.
            input_name, output_name = aggregator.input_names[0], aggregator.output_name

            def predict(inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
                start = clock()
                try:
                    feed = validate(inputs)
                    outputs = run(feed)
                except Exception:
                    error(clock() - start)
                    raise
                aggregator.main.update(feed[input_name], outputs[output_name], clock() - start)
                aggregator.last_feed = feed
                return outputs

        self.predict = predict  # type: ignore[method-assign]

    def self_test(self) -> SelfTestReport:
        """Runs the golden examples as one batch and the first one alone; compares them within tolerance
        and, for a classifier, compares their top-1 decisions (module docstring)."""
        started = time.perf_counter()
        inputs, expected, tolerance = self.bundle.golden()
        checked = self.artifact.get("numeric_error", {})
        if checked.get("checked"):  # an fp16 or int8 artifact was checked at compile time with its own tolerance
            tolerance = {k: max(tolerance[k], float(checked.get(k, 0.0))) for k in ("atol", "rtol")}
        # what this device really executes (an f16 hint may run in bf16 here): core/precision.py
        tolerance = widen(tolerance, getattr(self._backend, "executed_precision", None), expected.values())
        specs_in, specs_out = self.bundle.inputs, self.bundle.outputs
        count = sample_count(specs_in, inputs)
        failures: list[str] = []
        worst = 0.0
        runs = []
        for label, stop in (("batch", count), ("first example", 1)):  # on each tensor's batch axis (core/schema.py)
            got = self._run(self._validate(take_samples(specs_in, inputs, 0, stop)))  # not user traffic
            runs.append(got)
            for name, want in take_samples(specs_out, expected, 0, stop).items():
                diff, ok = _compare(got[name], want, tolerance)
                worst = max(worst, diff)
                if not ok:
                    failures.append(f"{name} ({label}): max abs error {diff:.3g} over atol={tolerance['atol']:g}, "
                                    f"rtol={tolerance['rtol']:g}")
        decisions = self._decisions(expected, runs, tolerance["atol"], failures)
        return SelfTestReport(not failures, count, worst, tolerance, failures, time.perf_counter() - started,
                              decisions)

    def _decisions(self, expected: dict, runs: list[dict], atol: float, failures: list[str]) -> dict | None:
        """The classifier's golden decisions (None for other tasks); a failure is appended to `failures`.
        atol: the numeric check's; where wider than the bundle's (a precision the target or this device
        lowered itself), it stands in for the noise, as in the compile check."""
        interface = self.bundle.manifest["interface"]
        output = decision_output(interface)
        if output is None:
            return None
        spec = next(s for s in self.bundle.outputs if s.name == output)
        want = samples_first(spec, expected[output])  # one row per example, whatever the output's batch axis
        got = [samples_first(spec, run[output]) for run in runs]
        if any(g.shape != want[:len(g)].shape for g in got):
            return None  # misshapen outputs (already a numeric failure)
        tie = tie_margin(self.bundle.manifest["golden"], atol)
        check = compare_decisions(want, got, tie, interface.get("class_names"))
        if not check.passed:
            failures.append(f"{output}: {check.problem()}")
        return check.record()

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _compare(got: np.ndarray, want: np.ndarray, tolerance: dict) -> tuple[float, bool]:
    if got.shape != want.shape:
        return float("inf"), False
    diff = float(np.max(np.abs(got.astype(np.float64) - want))) if got.size else 0.0
    ok = bool(np.allclose(got, want, atol=tolerance["atol"], rtol=tolerance["rtol"]))
    return diff, ok


def _parse_entry(entry: str, targets: dict) -> tuple[str, str | None]:
    """A backends=[...] entry as (backend name, target or None); BackendError for a name that is neither."""
    from edgefleet.edge_runtime.backends import REGISTRY

    if entry in REGISTRY:
        return entry, None
    if entry in targets:
        backend = targets[entry].get("backend")
        if backend in REGISTRY:
            return backend, entry
        raise BackendError(f"target {entry!r} runs on backend {backend!r}, which this edge runtime does not have "
                           f"(backends: {', '.join(sorted(REGISTRY))})")
    raise BackendError(f"unknown backend {entry!r}: not a backend ({', '.join(sorted(REGISTRY))}) nor a target "
                       f"compiled into this bundle ({', '.join(sorted(t for t in targets if t))})")


def _artifact_for(artifacts: list[dict], backend: str, formats: tuple[str, ...], target: str | None) -> dict | None:
    """The named target's artifact; else the last CPU artifact compiled for this backend; else the first
    CPU artifact in a format it runs (an accelerator's artifact is taken only by its target's name)."""
    if target is not None:
        return next((a for a in artifacts if a.get("target") == target and a.get("format") in formats), None)
    runnable = [a for a in artifacts if a.get("format") in formats and a.get("device", "cpu") == "cpu"]
    exact = [a for a in runnable if a.get("backend") == backend]
    return exact[-1] if exact else (runnable or [None])[0]


def _trust_store(trusted_keys: TrustedKeys | None) -> TrustStore:
    if isinstance(trusted_keys, TrustStore):
        trust = trusted_keys
    else:
        trust = TrustStore.from_paths(trusted_keys or [])
    if len(trust) == 0:
        raise VerificationError(
            "no_trusted_keys", "no trusted keys given: a device loads only bundles signed by a key it trusts"
        )
    return trust
