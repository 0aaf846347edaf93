"""`edgefleet compile`: compile a bundle for one or more targets; each artifact is checked before it enters.

Exit status: 0 when every target compiled; 1 when some were refused (each is a row of the table with
its reason, and the bundle holds the others); 2 for usage and input errors, when every target was
refused (nothing written), and with --strict at the first refusal.

Cloud-side: the compilers package (torch, onnx, target SDKs) is imported inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgefleet.cli.app import BundleArg, app, out
from edgefleet.cli.compress_commands import load_torch_model
from edgefleet.core.errors import EdgefleetError


@app.command("compile")
def compile_command(
    bundle: BundleArg,
    target: Annotated[list[str], typer.Option("--target", "-T", help="Target; repeatable (see --list)")] = [],  # noqa: B006
    option: Annotated[list[str], typer.Option("--option", "-o", help="TARGET.KEY=VALUE, e.g. "
                                              "openvino-cpu.precision=fp16; repeatable; VALUE is JSON or a string")
                      ] = [],  # noqa: B006
    torch_model: Annotated[str | None, typer.Option("--torch-model", help="module:function returning the torch "
                                                                          "model (the litert target needs it)")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the compiled bundle")] = Path("compiled"),
    key: Annotated[Path | None, typer.Option("--key", "-k", help="Private key to sign the compiled bundle")] = None,
    list_targets: Annotated[bool, typer.Option("--list", help="List the targets and exit")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write each target's result as JSON")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first refused target (write nothing)")
                      ] = False,
) -> None:
    """Compile a bundle for CPU/GPU/NPU targets; every artifact is checked on the golden examples."""
    from edgefleet.compilers.targets import TARGETS

    if list_targets:
        for name in TARGETS:
            out.print(name)
        return
    if not target:
        raise EdgefleetError(f"no --target given; targets: {', '.join(TARGETS)}")
    from edgefleet.compilers.compile import compile_bundle
    from edgefleet.core.signing import SigningKey

    result = compile_bundle(bundle, target, out_dir, options=parse_options(option),
                            torch_model=load_torch_model(torch_model) if torch_model else None,
                            signing_key=SigningKey.load(key) if key else None, strict=strict)
    table = Table("target", "backend", "artifact", "precision", "size", "max abs error", "checked with", "seconds",
                  title=f"{result.bundle.name} v{result.bundle.version} compiled")
    for item in result.compiled:
        entry, error = item.artifact, item.artifact["numeric_error"]
        how = ", ".join(f"{k}={v}" for k, v in (error.get("check_options") or {}).items()) if item.checked else ""
        checked = (f"{error['checked_with']} ({how})" if how else error["checked_with"]) if item.checked \
            else "[yellow]unchecked[/] (below)"
        table.add_row(item.target, entry["backend"], entry["path"], entry["precision"],
                      f"{_size(result.bundle, entry):,}", f"{error['max_abs']:.2g}" if item.checked else "-",
                      checked, f"{item.seconds:.2f}")
    for refusal in result.refused:
        table.add_row(refusal.target, "[red]refused[/]", "-", "-", "-", "-", "-", f"{refusal.seconds:.2f}")
    out.print(table)
    for refusal in result.refused:
        out.print(f"[red]{refusal.target} refused[/]: {escape(refusal.reason)}")
    for item in result.compiled:
        if not item.checked:
            out.print(f"[yellow]{item.target} unchecked[/]: {item.artifact['numeric_error']['reason']}")
    out.print(f"compiled bundle: {result.bundle.root}" + ("" if key else " (unsigned: pass --key to sign)"))
    if json_out:
        json_out.write_text(json.dumps(_report(target, result), indent=2))
        out.print(f"results written to {json_out}")
    if result.refused:
        raise typer.Exit(1)


def _report(targets: list[str], result) -> list[dict]:  # noqa: ANN001 - CompileResult (cloud-side import)
    """One entry per target in the order asked: {"target", "status": "compiled", "seconds", ...the artifact}
    or {"target", "status": "refused", "reason", "seconds"}."""
    entries = {c.target: {"target": c.target, "status": "compiled", "seconds": c.seconds, **c.artifact}
               for c in result.compiled}
    entries.update({r.target: {"target": r.target, "status": "refused", "reason": r.reason, "seconds": r.seconds}
                    for r in result.refused})
    return [entries[name] for name in dict.fromkeys(targets) if name in entries]


def parse_options(items: list[str]) -> dict[str, dict]:
    """["openvino-cpu.precision=fp16", "tensorrt.max_batch=8"] -> {"openvino-cpu": {"precision": "fp16"}, ...}."""
    options: dict[str, dict] = {}
    for item in items:
        name, eq, value = item.partition("=")
        target, dot, key = name.partition(".")
        if not (eq and dot and target and key):
            raise EdgefleetError(f"--option {item!r}: expected TARGET.KEY=VALUE, e.g. openvino-cpu.precision=fp16")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        options.setdefault(target, {})[key] = parsed
    return options


def _size(bundle, entry: dict) -> int:  # noqa: ANN001 - Bundle
    """Bytes of the artifact's folder (an IR's .xml and .bin, say), or of its one file."""
    folder = entry["path"].rsplit("/", 1)[0] + "/" if "/" in entry["path"] else entry["path"]
    return sum(f["size"] for rel, f in bundle.manifest["files"].items() if rel.startswith(folder) or rel == folder)
