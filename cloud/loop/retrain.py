"""The retraining stage (issue 15): the user's training function makes a new torch model from the serving
one and a frozen dataset, and the result becomes the serving bundle's next version, signed.

    result = retrain(TrainSpec(serving=..., train_fn="mymodels:train", dataset=DIR, mode="finetune",
                               torch_model="mymodels:serving", reference=REF_NPZ), out_dir, signing_key)

The training function is called as `train(old_model, reference, dataset, mode)`: old_model is the serving
model in torch (mode "finetune") or None (mode "scratch"); reference and dataset are dicts of numpy arrays,
one per model input plus `y` (the labels; reference's `y` only if its file has one), reference None
without --reference-data; mode is "scratch" or "finetune". It returns a torch.nn.Module.

A bundle holds ONNX, not torch weights, so the serving model in torch comes from `torch_model`
("module:function" returning it); before it is handed over it must reproduce the serving bundle's golden
outputs within the bundle's tolerances, so a fine-tune starts from the weights the fleet runs, not from
whatever the function happened to build.

Refused before anything is written (EdgefleetError, one line): a function path that does not import, an
exception inside the training function (its type and message), a result that is not a Module, a model
whose outputs on the dataset's first rows differ in number or per-sample shape from the serving bundle's.

The new bundle's reference profile (what drift is measured against) is built from the reference data AND
the new dataset's inputs: the model was retrained because the world moved to include the new condition,
and a profile of the old data alone would keep the drift alert that started the loop open on a model
made for that condition. Its lineage names the parent (name, version, manifest sha256), the dataset (name,
version, fingerprint from dataset.json), the mode, the function and the cost: wall and CPU seconds of the
training call, the process's peak RSS during it (Linux: the high-water mark is reset to the current RSS
just before the call, so it includes what the process held already, ~0.6 GB with torch and onnxruntime
loaded; elsewhere the process's lifetime peak, said so in `peak_rss_scope`), the rows forwarded through
outermost modules in training mode (epochs included: what the function actually trained on) and the rows
it was given.
"""

from __future__ import annotations

import copy
import importlib
import json
import resource
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgefleet.core import bundle as bundle_io
from edgefleet.core.bundle import Bundle
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.npz import load_npz
from edgefleet.core.schema import InputValidator, TensorSpec, batch_axis, sample_count
from edgefleet.core.signing import SigningKey

MODES = ("scratch", "finetune")
LABELS = "y"
PROBE_ROWS = 4  # rows of the dataset run through the returned model to check its outputs


@dataclass(frozen=True)
class TrainSpec:
    serving: Path  # the serving bundle (directory or .tar.gz), verified by the caller
    train_fn: str  # "module:function"
    dataset: Path  # a directory from `edgefleet dataset export`: dataset.npz + dataset.json
    mode: str = "finetune"
    reference: Path | None = None  # .npz: the data the serving model was trained on (inputs, optional y)
    torch_model: str | None = None  # "module:function" returning the serving model in torch


@dataclass(frozen=True)
class TrainResult:
    bundle: Bundle
    training: dict  # the lineage step: mode, function, dataset, cost
    model: torch.nn.Module | None = None  # the trained model: the loop hands it to compile (litert needs torch)


def load_callable(spec: str, flag: str):  # noqa: ANN201 - any callable the user names
    """The function "module:function" names (the current directory is importable, as for a script)."""
    module_name, _, function = spec.partition(":")
    if not module_name or not function:
        raise EdgefleetError(f"{flag}: expected module:function, got {spec!r}")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        found = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as err:
        raise EdgefleetError(f"{flag} {spec}: cannot import it ({type(err).__name__}: {err})") from err
    if not callable(found):
        raise EdgefleetError(f"{flag} {spec}: {type(found).__name__} is not callable")
    return found


def retrain(spec: TrainSpec, out_dir: Path, signing_key: SigningKey) -> TrainResult:
    """Trains, exports and signs the serving bundle's next version into out_dir (empty or absent)."""
    if spec.mode not in MODES:
        raise EdgefleetError(f"--mode {spec.mode!r}: expected one of {', '.join(MODES)}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EdgefleetError(f"--out {out}: not an empty directory; the new bundle is written into an empty one")
    serving = Bundle.open(spec.serving)
    inputs = serving.inputs
    dataset, record = _read_dataset(spec.dataset, inputs)
    reference = _read_npz(spec.reference, inputs, "--reference-data", labels_required=False) if spec.reference \
        else None
    old = _serving_torch(spec, serving) if spec.mode == "finetune" else None
    train = load_callable(spec.train_fn, "--train-fn")
    model, cost = _call(train, spec.train_fn, old, reference, dataset, spec.mode)
    _check_outputs(model, spec.train_fn, serving, {s.name: dataset[s.name] for s in inputs})
    cost["rows_given"] = {"reference": sample_count(inputs, reference) if reference else 0,
                          "dataset": sample_count(inputs, dataset)}
    training = {"stage": "train", "mode": spec.mode, "function": spec.train_fn,
                "serving_torch_model": spec.torch_model if old is not None else None,
                "dataset": {k: record.get(k) for k in ("name", "version", "fingerprint")},
                "reference_data": spec.reference.name if spec.reference else None, "cost": cost}
    bundle = _export(model, serving, dataset, reference, training, out, signing_key)
    return TrainResult(bundle, training, model)


def _read_dataset(directory: Path, inputs: list[TensorSpec]) -> tuple[dict[str, np.ndarray], dict]:
    npz, meta = Path(directory) / "dataset.npz", Path(directory) / "dataset.json"
    if not npz.is_file() or not meta.is_file():
        raise EdgefleetError(f"--dataset {directory}: expected dataset.npz and dataset.json (edgefleet dataset "
                             f"export NAME DIR)")
    try:
        record = json.loads(meta.read_text())
    except (OSError, ValueError) as err:
        raise EdgefleetError(f"--dataset {meta}: cannot read it as JSON ({err})") from err
    if not isinstance(record, dict) or not isinstance(record.get("fingerprint"), str) or not record["fingerprint"]:
        raise EdgefleetError(f"--dataset {meta}: no fingerprint; it does not come from `edgefleet dataset export`")
    return _read_npz(npz, inputs, "--dataset", labels_required=True), record


def _read_npz(path: Path, inputs: list[TensorSpec], flag: str, *, labels_required: bool) -> dict[str, np.ndarray]:
    """The model's inputs (a one-input model's may be `x`) and `y`, checked against the schema."""
    try:
        arrays = load_npz(path)
    except (OSError, ValueError, zipfile.BadZipFile, AttributeError) as err:
        raise EdgefleetError(f"{flag} {path}: cannot read it as .npz ({err})") from err
    held = ", ".join(sorted(arrays)) or "nothing"
    data = {}
    for spec in inputs:
        key = "x" if spec.name not in arrays and len(inputs) == 1 and "x" in arrays else spec.name
        if key not in arrays:
            raise EdgefleetError(f"{flag} {path} lacks the model input {spec.name!r} (it holds: {held})")
        value, want = arrays[key], np.dtype(spec.dtype)
        data[spec.name] = value.astype(want) if value.dtype.kind == want.kind == "f" else value
    try:
        InputValidator(list(inputs)).check(data)
    except EdgefleetError as err:
        raise EdgefleetError(f"{flag} {path}: {err}") from err
    count = sample_count(inputs, data)
    if LABELS not in arrays and labels_required:
        raise EdgefleetError(f"{flag} {path} has no labels {LABELS!r} (it holds: {held}); training needs a dataset "
                             f"frozen with labels (dataset create --labelled-only)")
    if LABELS in arrays:
        labels = arrays[LABELS]
        if labels.ndim == 0 or labels.shape[0] != count:
            raise EdgefleetError(f"{flag} {path}: {LABELS!r} has shape {labels.shape}; expected one label per "
                                 f"sample ({count})")
        data[LABELS] = labels
    return data


def _serving_torch(spec: TrainSpec, serving: Bundle) -> torch.nn.Module:
    """The serving model in torch, checked against the bundle's golden outputs."""
    if spec.torch_model is None:
        raise EdgefleetError(f"--mode finetune needs the serving model's torch weights, and {serving.name} "
                             f"v{serving.version} holds ONNX only: pass --torch-model module:function")
    model = load_callable(spec.torch_model, "--torch-model")()
    if not isinstance(model, torch.nn.Module):
        raise EdgefleetError(f"--torch-model {spec.torch_model} returned {type(model).__name__}, not a "
                             f"torch.nn.Module")
    golden_in, golden_out, entry = serving.golden()
    model.eval()
    try:
        with torch.no_grad():
            got = model(*[torch.from_numpy(golden_in[s.name]) for s in serving.inputs])
    except Exception as err:  # noqa: BLE001 - the user's model, reported as one line
        raise EdgefleetError(f"--torch-model {spec.torch_model} fails on the serving bundle's golden inputs "
                             f"({type(err).__name__}: {err})") from err
    got = got if isinstance(got, (tuple, list)) else (got,)
    for spec_out, value in zip(serving.outputs, got, strict=False):
        want = golden_out[spec_out.name]
        value = value.detach().numpy()
        if value.shape != want.shape or not np.allclose(value, want, atol=entry["atol"], rtol=entry["rtol"]):
            error = float(np.abs(value - want).max()) if value.shape == want.shape else float("nan")
            raise EdgefleetError(f"--torch-model {spec.torch_model} is not the serving model {serving.name} "
                                 f"v{serving.version}: its {spec_out.name!r} on the golden inputs differs (shape "
                                 f"{list(value.shape)} vs {list(want.shape)}, max abs error {error:.3g})")
    return model


def _call(train, name: str, old, reference, dataset, mode: str) -> tuple[torch.nn.Module, dict]:  # noqa: ANN001
    """Runs the user's function on copies of the data, measuring its cost; its failure is one line."""
    reference = {k: v.copy() for k, v in reference.items()} if reference is not None else None
    dataset = {k: v.copy() for k, v in dataset.items()}
    rows = _RowCounter()
    hwm_reset = _reset_peak_rss()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        with rows:
            model = train(copy.deepcopy(old) if old is not None else None, reference, dataset, mode)
    except Exception as err:  # noqa: BLE001 - the user's code: its type and message, nothing written
        raise EdgefleetError(f"--train-fn {name} raised {type(err).__name__}: {err}") from err
    cost = {"wall_s": round(time.perf_counter() - wall, 3), "cpu_s": round(time.process_time() - cpu, 3),
            "peak_rss_bytes": _peak_rss(), "peak_rss_scope": "training call" if hwm_reset else "process",
            "rows_seen": rows.rows}
    if not isinstance(model, torch.nn.Module):
        raise EdgefleetError(f"--train-fn {name} returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval(), cost


class _RowCounter:
    """Counts the rows forwarded through outermost modules in training mode while active (global hooks)."""

    def __init__(self) -> None:
        self.rows, self._depth, self._handles = 0, 0, []

    def __enter__(self) -> _RowCounter:
        hooks = torch.nn.modules.module
        self._handles = [hooks.register_module_forward_pre_hook(self._pre),
                         hooks.register_module_forward_hook(self._post)]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _pre(self, module: torch.nn.Module, args: tuple) -> None:
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if self._depth == 0 and module.training and first is not None and first.ndim > 0:
            self.rows += int(first.shape[0])
        self._depth += 1

    def _post(self, module: torch.nn.Module, args: tuple, output: object) -> None:
        self._depth = max(0, self._depth - 1)


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def _check_outputs(model: torch.nn.Module, name: str, serving: Bundle, data: dict[str, np.ndarray]) -> None:
    """The model's outputs on a few dataset rows have the serving bundle's number and per-sample shapes."""
    rows = {s.name: np.take(data[s.name], range(min(PROBE_ROWS, sample_count(serving.inputs, data))),
                            axis=batch_axis(s) or 0) for s in serving.inputs}
    try:
        with torch.no_grad():
            got = model(*[torch.from_numpy(rows[s.name]) for s in serving.inputs])
    except Exception as err:  # noqa: BLE001 - the user's model, reported as one line
        raise EdgefleetError(f"the model --train-fn {name} returned fails on the dataset's inputs "
                             f"({type(err).__name__}: {err})") from err
    got = got if isinstance(got, (tuple, list)) else (got,)
    if len(got) != len(serving.outputs):
        raise EdgefleetError(f"the model --train-fn {name} returned has {len(got)} output(s); {serving.name} "
                             f"has {len(serving.outputs)}")
    for spec, value in zip(serving.outputs, got, strict=True):
        want = [d if isinstance(d, int) else None for d in spec.shape]
        shape = list(getattr(value, "shape", ()))
        axis = batch_axis(spec)
        fits = len(shape) == len(want) and all(w is None or w == s for w, s in zip(want, shape, strict=True))
        if not fits or (axis is not None and shape[axis] != len(next(iter(rows.values())))):
            raise EdgefleetError(f"the model --train-fn {name} returned gives {spec.name!r} of shape {shape} for "
                                 f"{PROBE_ROWS} rows; {serving.name}'s is {spec.describe()}")


def _export(model: torch.nn.Module, serving: Bundle, dataset: dict, reference: dict | None, training: dict,
            out: Path, signing_key: SigningKey) -> Bundle:
    """The next version with the serving interface; profile over reference + dataset inputs (module doc)."""
    from edgefleet.compilers import export_torch

    inputs = serving.inputs
    parts = [d for d in (reference, dataset) if d is not None]
    profile = {s.name: np.concatenate([d[s.name] for d in parts], axis=batch_axis(s) or 0) for s in inputs}
    labels = np.concatenate([d[LABELS] for d in parts]) if all(LABELS in d for d in parts) else None
    interface = serving.manifest["interface"]
    version = serving.version + 1
    parent = {"name": serving.name, "version": serving.version,
              "manifest_sha256": bundle_io.file_digest(serving.root / bundle_io.MANIFEST)}
    dataset_ref = training["dataset"]
    card = {**serving.manifest.get("model_card", {}),
            "training_data": f"{training['mode']} from {serving.name} v{serving.version} on dataset "
                             f"{dataset_ref['name']} v{dataset_ref['version']} ({dataset_ref['fingerprint']})"
                             + (f" with reference data {training['reference_data']}" if reference else "")}
    card.pop("evaluation", None)
    card.pop("offline_evaluation", None)
    exported = export_torch(
        model, {s.name: profile[s.name][:PROBE_ROWS] for s in inputs}, out, name=serving.name, version=version,
        reference_data=profile, labels=labels, class_names=interface.get("class_names"),
        input_names=[s.name for s in inputs], output_names=[s.name for s in serving.outputs],
        task=interface.get("task"), postprocess=interface.get("postprocess"),
        profiled_inputs=interface.get("profiled_inputs"),
        preprocessing=interface.get("preprocessing", ""), parent=parent, model_card=card,
        label=f"{serving.name} v{version} ({training['mode']} on {dataset_ref['name']} v{dataset_ref['version']})")
    manifest = dict(exported.manifest)
    manifest["lineage"] = {**manifest["lineage"], "dataset": dataset_ref,
                           "steps": [{**training, "at": manifest["lineage"]["steps"][0]["at"]},
                                     *manifest["lineage"]["steps"]]}
    bundle_io.write_manifest(out, manifest)
    bundle_io.sign(out, signing_key)
    return Bundle.open(out)
