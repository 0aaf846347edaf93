"""`edgefleet compress`: run a compression recipe on a bundle (and its torch model), write the new bundles.

Cloud-side: torch, onnx and the compress package are imported inside the command, never at module level.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from edgefleet.cli.app import BundleArg, app, out
from edgefleet.core.errors import EdgefleetError

DATA_KEYS = ("x_train", "y_train", "x_test", "y_test")
LABELS = ("y_train", "y_test")


def read_data(path: Path) -> dict:
    """x_train, y_train, x_test, y_test and slices={name: mask} from the slice_<name> arrays of an .npz.
    Without y_train and y_test (both absent) the recipe's ONNX steps are measured as top-1 agreement with
    the source bundle's model; x_val (and y_val with labels) are passed on when present."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as err:
        raise EdgefleetError(f"--data {path}: cannot read it as .npz ({err})") from err
    labelled = any(k in arrays for k in LABELS)
    missing = [k for k in DATA_KEYS if k not in arrays and (labelled or k not in LABELS)]
    if missing:
        raise EdgefleetError(f"--data {path} lacks {', '.join(missing)} (it needs x_train and x_test, and for "
                             f"labels both y_train and y_test)")
    data = {k: arrays[k] for k in (*DATA_KEYS, "x_val", "y_val") if k in arrays}
    slices = {k.removeprefix("slice_"): v.astype(bool) for k, v in arrays.items() if k.startswith("slice_")}
    for name, mask in slices.items():
        if mask.shape != (len(data["x_test"]),):
            raise EdgefleetError(f"--data slice_{name}: expected {len(data['x_test'])} booleans (one per test row), "
                                 f"got shape {mask.shape}")
    if slices:
        data["slices"] = slices
    return data


def load_torch_model(spec: str):  # noqa: ANN201 - torch is imported lazily
    """Calls "module:function" (from the current directory too) and returns the torch model it builds."""
    import importlib

    import torch

    module_name, _, function = spec.partition(":")
    if not module_name or not function:
        raise EdgefleetError(f"--torch-model: expected module:function, got {spec!r}")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        factory = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as err:
        raise EdgefleetError(f"--torch-model {spec}: cannot import it ({type(err).__name__}: {err})") from err
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise EdgefleetError(f"--torch-model {spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


@app.command("compress")
def compress(
    bundle: BundleArg,
    recipe: Annotated[Path, typer.Option("--recipe", "-r", help="Recipe TOML ([[step]] tables)")],
    data: Annotated[Path, typer.Option("--data", "-d", help=".npz with x_train, y_train, x_test, y_test, "
                                                              "optional slice_<name> masks over the test rows; "
                                                              "without y_train/y_test: agreement with the "
                                                              "source model")],
    torch_model: Annotated[str | None, typer.Option("--torch-model", help="module:function returning the trained "
                                                                          "torch model (for torch steps)")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the new bundles")] = Path("compressed"),
    key: Annotated[Path | None, typer.Option("--key", "-k", help="Private key to sign the new bundles")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the step results as JSON")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the report's plot (.png)")] = None,
) -> None:
    """Compress a bundle with a recipe: pruning, low-rank, distillation (torch), quantization, fp16 (ONNX)."""
    from edgefleet.cloud.compress.recipe import load_recipe, run_recipe
    from edgefleet.core.bundle import Bundle
    from edgefleet.core.signing import SigningKey

    loaded = load_recipe(recipe)
    if loaded.needs_torch and torch_model is None:
        first = next(s for s in loaded.steps if s.on_torch)
        raise EdgefleetError(f"recipe step '{first.method}' works on the torch model: "
                             f"pass --torch-model module:function")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise EdgefleetError(f"--out {out_dir} is not empty")
    source = Bundle.open(bundle)
    model = load_torch_model(torch_model) if torch_model else None
    result = run_recipe(loaded, model=model, bundle=source, data=read_data(data), out_dir=out_dir,
                        signing_key=SigningKey.load(key) if key else None)
    table = Table("step", "method", "accuracy", "params", "FLOPs/sample", "ONNX size", "bundle",
                  title=f"{source.name} v{source.version} -> {result.bundle.name} v{result.bundle.version}")
    for step in result.steps:
        table.add_row(str(step.index or ""), step.method,
                      f"{step.accuracy_before:.4f} -> {step.accuracy_after:.4f}",
                      _pair(step.params_before, step.params_after), _pair(step.flops_before, step.flops_after),
                      _pair(step.size_before, step.size_after), str(step.bundle or ""))
    out.print(table)
    if result.report is not None:
        from edgefleet.cloud.compress.report import render_table

        for report_table in render_table(result.report):
            out.print(report_table)
    out.print(f"final bundle: {result.bundle.root}" + ("" if key else " (unsigned: pass --key to sign)"))
    if json_out:
        json_out.write_text(json.dumps(_as_json(result), indent=2))
        out.print(f"results written to {json_out}")
    if plot:
        _plot(result, plot)


def _pair(before: int | None, after: int | None) -> str:
    if before is None and after is None:
        return ""
    return f"{before if before is not None else '?'} -> {after if after is not None else '?'}"


def _as_json(result) -> dict:  # noqa: ANN001 - RecipeResult, imported lazily
    if result.report is not None:
        try:
            from edgefleet.cloud.compress.report import to_json

            document = to_json(result.report)
            return json.loads(document) if isinstance(document, str) else document
        except ImportError:
            pass
    steps = [{"index": s.index, "method": s.method, "options": s.options, "metrics_before": s.metrics_before,
              "metrics_after": s.metrics_after, "params_before": s.params_before, "params_after": s.params_after,
              "flops_before": s.flops_before, "flops_after": s.flops_after, "size_before": s.size_before,
              "size_after": s.size_after, "bundle": str(s.bundle) if s.bundle else None} for s in result.steps]
    return {"bundle": str(result.bundle.root), "name": result.bundle.name, "version": result.bundle.version,
            "steps": steps}


def _plot(result, path: Path) -> None:  # noqa: ANN001 - RecipeResult, imported lazily
    try:
        from edgefleet.cloud.compress.report import plot
    except ImportError as err:
        raise EdgefleetError(f"--plot needs edgefleet.cloud.compress.report.plot, which is not available ({err})") \
            from err
    if result.report is None:
        raise EdgefleetError("--plot: no report was built for these steps (see the log)")
    plot(result.report, path)
    out.print(f"plot written to {path}")
