"""One run of a retraining policy (cloud/loop/policy.py), stage by stage, each recorded in the cloud's
`loop_runs`/`loop_stages` tables through its API (cloud/loop/run_store.py), so the run works against a
remote cloud like every other fleet command:

    dataset   freeze the fleet's captured, labelled samples (POST /datasets), export them, split off the
              holdout share (evaluated as "recent" data, never trained on)
    train     the user's function on the rest (cloud/loop/retrain.py), from the version the fleet serves
    compress  the policy's recipe (ONNX steps) on the retrained bundle
    compile   the policy's targets
    evaluate  the compiled candidate against the serving bundle (cloud/loop/offline_eval.py): a refused
              candidate stops the run here unless forced; the report is signed into the candidate
    push      the candidate to the registry
    deploy    a rollout to the fleet with the policy's waves and quality gates, followed to its end; an
              aborted rollout (a gate failed) stops the run with the rollout's reason

    outcome = run_policy(policy, client, trust=store, force=False, workdir=Path("runs/loop"), progress=print)

Each stage is written `running` with its inputs before it starts, then `succeeded` with outputs and
metrics, `stopped` (a refusal the policy asks for: too few samples, a worse candidate, a failed gate) or
`failed` (an error, its one-line message); the run ends with the same state and reason. A stage the policy
leaves out (no recipe, no targets, no deployment) is `skipped`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgefleet.cloud.loop.policy import Policy
from edgefleet.core.api_client import CloudClient
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.npz import load_npz
from edgefleet.core.signing import SigningKey, TrustStore

log = logging.getLogger(__name__)
FINAL_ROLLOUT = ("completed", "aborted")
POLL_SECONDS = 1.0
LOOKBACK = 300.0  # seconds of the serving model's labelled traffic before the run that "before" covers


class StopRun(EdgefleetError):
    """A stage refused to go on as the policy asks (a worse candidate, a failed gate, too little data)."""


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    state: str  # succeeded, stopped or failed
    reason: str | None
    bundle: dict | None
    record: dict  # the run as GET /loop/runs/{id} answers


class _Recorder:
    """Writes the run and its stages through the cloud API."""

    def __init__(self, client: CloudClient, run_id: str, progress: Callable[[str], None]) -> None:
        self.client, self.run_id, self.progress = client, run_id, progress
        self.started_at = time.time()

    def put(self, name: str, **body: object) -> None:
        self.client.put_json(f"/api/v1/loop/runs/{self.run_id}/stages/{name}",
                             {k: v for k, v in body.items() if v is not None})

    @contextmanager
    def stage(self, name: str, inputs: dict) -> Iterator[dict]:
        """Yields a dict the stage fills with outputs and metrics; writes the stage's state around it."""
        self.progress(f"{name}...")
        self.put(name, state="running", inputs=_jsonable(inputs))
        result: dict = {"outputs": {}, "metrics": {}}
        started = time.perf_counter()
        try:
            yield result
        except StopRun as err:
            self.put(name, state="stopped", message=str(err), **_jsonable(result))
            raise
        except EdgefleetError as err:
            self.put(name, state="failed", message=str(err), **_jsonable(result))
            raise
        self.put(name, state="succeeded", **_jsonable(result))
        self.progress(f"{name} done in {time.perf_counter() - started:.1f} s")

    def skip(self, name: str, why: str) -> None:
        self.put(name, state="skipped", message=why)


def _jsonable(value: object) -> object:
    return json.loads(json.dumps(value, default=str, allow_nan=False))


def run_policy(policy: Policy, client: CloudClient, *, trust: TrustStore, force: bool = False,
               workdir: Path = Path("runs/loop"), trigger: dict | None = None,
               progress: Callable[[str], None] = lambda _text: None) -> RunOutcome:
    """Runs the policy once (module docstring); only a failure to reach the cloud raises."""
    key = SigningKey.load(policy.key)
    if key.key_id not in trust.key_ids:
        raise EdgefleetError(f"{policy.path}: [signing] key {policy.key} (key id {key.key_id}) is not among the "
                             f"trusted keys: the retrained bundle would not verify")
    document = {"path": str(policy.path), "model": policy.model, "fleet": policy.fleet, "trigger": policy.trigger,
                "training": asdict(policy.training), "dataset": asdict(policy.dataset),
                "recipe": {"source": policy.recipe.source, "targets": list(policy.recipe.targets)},
                "evaluation": asdict(policy.evaluation),
                "deployment": asdict(policy.deployment) if policy.deployment else None}
    run = client.post_json("/api/v1/loop/runs", {
        "policy": policy.name, "model": policy.model, "fleet": policy.fleet, "document": _jsonable(document),
        "trigger": {"kind": (trigger or {}).get("kind", "manual"), **(trigger or {}), "forced": force}})
    run_id = run["id"]
    work = Path(workdir) / run_id
    work.mkdir(parents=True, exist_ok=True)
    progress(f"loop run {run_id} of policy {policy.name} ({work})")
    recorder = _Recorder(client, run_id, progress)
    state, reason, bundle = "succeeded", None, None
    try:
        bundle = _stages(policy, client, recorder, trust, key, force, work)
    except StopRun as err:
        state, reason = "stopped", str(err)
    except EdgefleetError as err:
        state, reason = "failed", str(err)
    end = {"state": state, "reason": reason, "bundle": bundle}
    record = client.put_json(f"/api/v1/loop/runs/{run_id}", {k: v for k, v in end.items() if v is not None})
    return RunOutcome(run_id, state, reason, bundle, record)


def _stages(policy: Policy, client: CloudClient, rec: _Recorder, trust: TrustStore, key: SigningKey, force: bool,
            work: Path) -> dict | None:
    train_dir, recent = _dataset_stage(policy, client, rec, work)
    serving, serving_version = _serving_bundle(policy, client, work)
    trained = _train_stage(policy, rec, serving, train_dir, key, work)
    candidate = _compress_stage(policy, rec, trained, train_dir, key, work)
    candidate = _compile_stage(policy, rec, candidate, trained, key, work)
    _evaluate_stage(policy, rec, candidate, serving, recent, trust, key, force, work)
    from edgefleet.core.bundle import Bundle

    final = Bundle.open(candidate)
    bundle = {"name": final.name, "version": final.version}
    with rec.stage("push", {"bundle": str(candidate)}) as result:
        archive = final.pack(work / "candidate.tar.gz")
        stored = client.post_file("/api/v1/bundles", archive)
        result["outputs"] = {"name": stored["name"], "version": stored["version"], "sha256": stored.get("sha256"),
                             "size": stored.get("size")}
    if policy.deployment is None:
        rec.skip("deploy", "the policy has no [deployment]")
        return bundle
    _deploy_stage(policy, client, rec, bundle, serving_version)
    return bundle


def dataset_filter(policy: Policy) -> dict:
    """The captures a run freezes now: the fleet's labelled samples of the model, within the policy's window."""
    selection = policy.dataset
    since = selection.since if selection.window_s is None else time.time() - selection.window_s
    return {"fleet": policy.fleet, "model": policy.model, "labelled_only": True,
            **({"since": since} if since is not None else {})}


def _dataset_stage(policy: Policy, client: CloudClient, rec: _Recorder, work: Path) -> tuple[Path, Path | None]:
    selection = policy.dataset
    body = {"name": selection.name, **dataset_filter(policy)}
    with rec.stage("dataset", body) as result:
        record = client.post_json("/api/v1/datasets", body)
        result["outputs"] = {k: record.get(k) for k in ("name", "version", "fingerprint", "samples", "rows")}
        if record["rows"] < selection.min_samples:
            raise StopRun(f"dataset {record['name']}:{record['version']} holds {record['rows']} labelled rows; the "
                          f"policy needs at least {selection.min_samples}")
        content, _ = CloudClient(client.url, client.token, timeout=300).get_bytes(
            f"/api/v1/datasets/{record['name']}/{record['version']}/export")
        (work / "dataset.npz").write_bytes(content)
        arrays = load_npz(work / "dataset.npz")
        rows = len(arrays["y"])
        order = np.random.default_rng(selection.seed).permutation(rows)
        cut = int(round(rows * selection.holdout_fraction))
        held, kept = np.sort(order[:cut]), np.sort(order[cut:])
        train_dir = work / "train-data"
        train_dir.mkdir(exist_ok=True)
        np.savez(train_dir / "dataset.npz", **{k: v[kept] for k, v in arrays.items()})
        (train_dir / "dataset.json").write_text(json.dumps({**record, "split": {
            "train_rows": int(kept.size), "holdout_rows": int(held.size), "seed": selection.seed}}))
        recent = None
        if held.size:
            recent = work / "recent.npz"
            np.savez(recent, **{k: v[held] for k, v in arrays.items()})
        result["metrics"] = {"train_rows": int(kept.size), "holdout_rows": int(held.size),
                             "classes": record.get("classes"), "slices": record.get("slices")}
    return train_dir, recent


def _serving_bundle(policy: Policy, client: CloudClient, work: Path) -> tuple[Path, int]:
    """The version most of the fleet's devices serve (else the registry's newest), downloaded."""
    devices = [d for d in client.get("/api/v1/devices") if d["fleet"] == policy.fleet
               and d.get("model_name") == policy.model and d.get("model_version") is not None]
    if devices:
        version = Counter(d["model_version"] for d in devices).most_common(1)[0][0]
    else:
        versions = [b["version"] for b in client.get("/api/v1/bundles") if b["name"] == policy.model]
        if not versions:
            raise EdgefleetError(f"no device of fleet {policy.fleet} serves {policy.model} and the registry holds "
                                 f"no version of it: nothing to retrain from")
        version = max(versions)
    content, _ = CloudClient(client.url, client.token, timeout=300).get_bytes(
        f"/api/v1/bundles/{policy.model}/{version}/download")
    path = work / f"serving-v{version}.tar.gz"
    path.write_bytes(content)
    return path, version


def _train_stage(policy: Policy, rec: _Recorder, serving: Path, train_dir: Path, key: SigningKey, work: Path):  # noqa: ANN202
    from edgefleet.cloud.loop.retrain import TrainSpec, retrain

    spec = TrainSpec(serving, policy.training.function, train_dir, policy.training.mode,
                     policy.training.reference_data, policy.training.torch_model)
    with rec.stage("train", {"serving": serving.name, **asdict(policy.training)}) as result:
        trained = retrain(spec, work / "trained", key)
        result["outputs"] = {"bundle": str(trained.bundle.root), "name": trained.bundle.name,
                             "version": trained.bundle.version}
        result["metrics"] = {"mode": trained.training["mode"], **trained.training["cost"]}
    return trained


def _split_arrays(policy: Policy, trained, train_dir: Path) -> dict:  # noqa: ANN001 - TrainResult
    """run_recipe's data: the training split as x_train/y_train, the held-out file as x_test/y_test."""
    name = trained.bundle.inputs[0].name
    train = load_npz(train_dir / "dataset.npz", [name, "y"])
    held = load_npz(policy.evaluation.heldout)
    x_train, y_train = train[name], train["y"]
    x_test = held[name] if name in held else held["x"]
    y_test = held["y"]
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _compress_stage(policy: Policy, rec: _Recorder, trained, train_dir: Path, key: SigningKey, work: Path) -> Path:  # noqa: ANN001
    recipe = policy.recipe.recipe
    if recipe is None:
        rec.skip("compress", "the policy has no recipe")
        return trained.bundle.root
    from edgefleet.cloud.compress.recipe import run_recipe

    with rec.stage("compress", {"recipe": policy.recipe.source,
                                "steps": [{"method": s.method, **s.options} for s in recipe.steps]}) as result:
        done = run_recipe(recipe, bundle=trained.bundle, data=_split_arrays(policy, trained, train_dir),
                          out_dir=work / "compress", signing_key=key)
        result["outputs"] = {"bundle": str(done.bundle.root)}
        result["metrics"] = {"steps": [{"method": s.method, "accuracy_before": s.accuracy_before,
                                        "accuracy_after": s.accuracy_after, "size_before": s.size_before,
                                        "size_after": s.size_after} for s in done.steps]}
    return done.bundle.root


def _compile_stage(policy: Policy, rec: _Recorder, candidate: Path, trained, key: SigningKey, work: Path) -> Path:  # noqa: ANN001
    targets = list(policy.recipe.targets)
    if not targets:
        rec.skip("compile", "the policy names no compile targets")
        return candidate
    from edgefleet.compilers.compile import compile_bundle

    with rec.stage("compile", {"bundle": str(candidate), "targets": targets}) as result:
        done = compile_bundle(candidate, targets, work / "compiled", torch_model=trained.model, signing_key=key)
        result["outputs"] = {"bundle": str(done.bundle.root), "compiled": [c.target for c in done.compiled],
                             "refused": [{"target": r.target, "reason": r.reason} for r in done.refused]}
        result["metrics"] = {c.target: {"seconds": round(c.seconds, 3)} for c in done.compiled}
    return done.bundle.root


def _evaluate_stage(policy: Policy, rec: _Recorder, candidate: Path, serving: Path, recent: Path | None,
                    trust: TrustStore, key: SigningKey, force: bool, work: Path) -> None:
    from edgefleet.cloud.loop.eval_report import attach_to_bundle
    from edgefleet.cloud.loop.offline_eval import EvalOptions, evaluate

    spec = policy.evaluation
    options = EvalOptions(critical_slices=spec.critical_slices, slice_keys=spec.slices, min_rows=spec.min_rows,
                          max_drop=spec.max_drop, force=force, checks=spec.checks)
    with rec.stage("evaluate", {"candidate": str(candidate), "serving": serving.name, "heldout": str(spec.heldout),
                                "recent": str(recent) if recent else None, "force": force}) as result:
        report = evaluate(candidate, serving, spec.heldout, recent, trust=trust, options=options)
        attach_to_bundle(report, candidate, key)
        (work / "evaluation.json").write_text(json.dumps(report, indent=2, allow_nan=False))
        from edgefleet.cloud.loop.eval_report import summary

        result["outputs"] = {"report": str(work / "evaluation.json")}
        result["metrics"] = summary(report)
        decision = report["decision"]
        if decision["refused"] and not decision["forced"]:
            raise StopRun("offline evaluation refused the candidate: " + "; ".join(decision["reasons"])
                          + " (loop run --force goes on, recorded in the report)")


def _deploy_stage(policy: Policy, client: CloudClient, rec: _Recorder, bundle: dict, serving_version: int) -> None:
    plan = policy.deployment
    strategy: dict = {"kind": "waves" if plan.waves else "all", "wave_timeout_seconds": plan.wave_timeout,
                      "health_window_seconds": plan.health_window, "mode": "switch"}
    if plan.waves:
        strategy["waves"] = list(plan.waves)
    if plan.gates:
        strategy["quality_gates"] = dict(plan.gates)
    body = {"target": {"fleet": policy.fleet}, "bundle": bundle, "strategy": strategy}
    with rec.stage("deploy", body) as result:
        deployment = client.post_json("/api/v1/deployments", body)
        path = f"/api/v1/deployments/{deployment['id']}"
        deadline = time.monotonic() + plan.timeout
        seen = None
        while deployment["state"] not in FINAL_ROLLOUT:
            if time.monotonic() > deadline:
                raise EdgefleetError(f"deployment {deployment['id']} is still {deployment['state']} after "
                                     f"{plan.timeout:g} s (the policy's [deployment] timeout); it goes on in the "
                                     f"cloud")
            now = (deployment["state"], deployment["current_wave"])
            if now != seen:
                rec.progress(f"deploy: deployment {deployment['id']} {now[0]}, wave {now[1]} of "
                             f"{deployment['wave_count']}")
                seen = now
            time.sleep(POLL_SECONDS)
            deployment = client.get(path)
        result["outputs"] = {"deployment": deployment["id"], "state": deployment["state"],
                             "reason": deployment.get("reason"), "gates": deployment.get("gates"),
                             "devices": {d["device"]: d["state"] for d in deployment["devices"]}}
        if deployment["state"] == "aborted":
            raise StopRun(f"deployment {deployment['id']} aborted: {deployment.get('reason')}")
        if plan.measure_seconds:
            rec.progress(f"deploy: measuring accuracy on the new model for {plan.measure_seconds:g} s")
            time.sleep(plan.measure_seconds)
        result["metrics"] = {"accuracy_per_device": _before_after(client, deployment, serving_version, bundle,
                                                                  rec.started_at)}


def _before_after(client: CloudClient, deployment: dict, serving_version: int, bundle: dict,
                  run_started: float) -> dict:
    """Per device: measured accuracy (labels that arrived) of the serving version in the LOOKBACK seconds
    before the run started, and of the new version since the device reported it active."""
    figures = {}
    for row in deployment["devices"]:
        device = row["device"]
        before = _measured(client, device, serving_version, run_started - LOOKBACK, run_started)
        after = _measured(client, device, bundle["version"], row.get("updated_at") or run_started, time.time())
        figures[device] = {"before": before, "after": after}
    return figures


def _measured(client: CloudClient, device: str, version: int, since: float, until: float) -> dict:
    answer = client.get(f"/api/v1/devices/{device}/performance?since={since:.3f}&until={until:.3f}"
                        f"&bucket_seconds=86400&version={version}")
    labels = sum(p["labels"] for p in answer["points"])
    correct = sum((p.get("accuracy") or 0.0) * p["labels"] for p in answer["points"])
    return {"version": version, "labels": labels, "accuracy": round(correct / labels, 4) if labels else None}
