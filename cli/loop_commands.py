"""`edgefleet loop`: the retraining loop (issue 15). `loop stage NAME` runs one stage with files in and
files out, the same code the loop runs itself, so an outside orchestrator (Airflow, Argo, Prefect) can
run each stage as a task: its exit code says whether to go on (0), or that the stage refused (2, one line
on stderr), and its output files feed the next task.

A new stage registers on `stage_app` here, importing its library (cloud/loop/) inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.cli.app import TrustOption, app, out, trust_store
from edgefleet.core.errors import EdgefleetError

loop_app = typer.Typer(no_args_is_help=True, help="The retraining loop: from a drift alert to a better model.")
stage_app = typer.Typer(no_args_is_help=True, help="Each stage of the loop as a command with files in and out.")
app.add_typer(loop_app, name="loop")
loop_app.add_typer(stage_app, name="stage")


@stage_app.command("evaluate")
def evaluate(
    candidate: Annotated[Path, typer.Option("--candidate", help="Candidate bundle directory (the report is "
                                                                "written into it and signed with --key)")],
    serving: Annotated[Path, typer.Option("--serving", help="The serving model's bundle (directory or .tar.gz)")],
    data: Annotated[Path, typer.Option("--data", help="Held-out .npz: one array per model input (or x), labels "
                                                      "y, optional slice key")],
    out_path: Annotated[Path, typer.Option("--out", help="Write the report here (JSON)")],
    key: Annotated[Path, typer.Option("--key", "-k", help="Private key to sign the candidate again")],
    recent: Annotated[Path | None, typer.Option("--recent", help="Recently captured .npz (labels optional)")] = None,
    slices: Annotated[list[str] | None, typer.Option("--slices", help="Key of the .npz whose values name the "
                                                                      "slices (default: slice); repeatable")] = None,
    critical: Annotated[list[str] | None, typer.Option("--critical-slice", help="A slice on which the candidate "
                                                                                "may not be worse; repeatable "
                                                                                "(the whole data always is)")] = None,
    checks: Annotated[Path | None, typer.Option("--checks", help="Policy TOML: perturbation, calibration limits "
                                                                 "and invariances")] = None,
    min_rows: Annotated[int, typer.Option("--min-rows", min=1, help="Groups with fewer rows are not "
                                                                    "judged")] = 20,
    max_drop: Annotated[float, typer.Option("--max-drop", min=0.0, help="Loss accepted on a group before it "
                                                                        "counts as worse (accuracy, or MAE "
                                                                        "units)")] = 0.0,
    backend: Annotated[list[str] | None, typer.Option("--backend", "-b", help="Backend or target, in order "
                                                                              "(default: the bundle's own)")] = None,
    force: Annotated[bool, typer.Option("--force", help="Accept a refused candidate; the report says "
                                                        "so")] = False,
    trust: TrustOption = None,
) -> None:
    """Compare a candidate with the serving model before any rollout; exit 2 when it is refused."""
    from edgefleet.cloud.loop.eval_report import attach_to_bundle, render_tables
    from edgefleet.cloud.loop.offline_eval import EvalOptions
    from edgefleet.cloud.loop.offline_eval import evaluate as run_evaluation
    from edgefleet.core.signing import SigningKey

    if not candidate.is_dir():
        raise EdgefleetError(f"--candidate {candidate}: not a bundle directory (the report is written into the "
                             f"candidate; unpack a .tar.gz first)")
    signing_key = SigningKey.load(key)
    store = trust_store(trust)
    if signing_key.key_id not in store.key_ids:
        raise EdgefleetError(f"--key {key} (key id {signing_key.key_id}) is not among the trusted keys: the "
                             f"candidate signed with it would no longer verify")
    options = EvalOptions(critical_slices=tuple(critical or ()), slice_keys=tuple(slices or ()), min_rows=min_rows,
                          max_drop=max_drop, force=force, checks=checks, backends=tuple(backend) if backend else None)
    report = run_evaluation(candidate, serving, data, recent, trust=store, options=options)
    attach_to_bundle(report, candidate, signing_key)
    out_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    for table in render_tables(report):
        out.print(table)
    decision = report["decision"]
    if decision["refused"] and not decision["forced"]:
        raise EdgefleetError("candidate refused: " + "; ".join(decision["reasons"]) + " (--force accepts it, "
                             "recorded in the report)")
    if decision["forced"]:
        from rich.markup import escape

        out.print(f"[yellow]forced past the refusal[/yellow] ({len(decision['reasons'])} reason(s), recorded in "
                  f"the report): " + escape("; ".join(decision["reasons"])), highlight=False)
    out.print(f"report written to {out_path} and into {candidate} (signed by {signing_key.key_id})")


@stage_app.command("train")
def train(
    serving: Annotated[Path, typer.Option("--serving", help="The serving model's bundle (directory or .tar.gz); "
                                                            "the new bundle is its next version")],
    train_fn: Annotated[str, typer.Option("--train-fn", help="module:function called as f(old_model, reference, "
                                                             "dataset, mode), returning a torch.nn.Module")],
    dataset: Annotated[Path, typer.Option("--dataset", help="Directory from `edgefleet dataset export` "
                                                            "(dataset.npz with labels, dataset.json)")],
    key: Annotated[Path, typer.Option("--key", "-k", help="Private key to sign the new bundle")],
    out_dir: Annotated[Path, typer.Option("--out", help="Empty directory for the new bundle")],
    reference: Annotated[Path | None, typer.Option("--reference-data", help=".npz of the serving model's training "
                                                                            "data (inputs, optional y)")] = None,
    mode: Annotated[str, typer.Option("--mode", help="scratch (old_model is None) or finetune")] = "finetune",
    torch_model: Annotated[str | None, typer.Option("--torch-model", help="module:function returning the serving "
                                                                          "model in torch (finetune; checked "
                                                                          "against the bundle's golden outputs)")]
    = None,
    trust: TrustOption = None,
) -> None:
    """Retrain with the user's function and write the serving bundle's next version, signed, with lineage."""
    from edgefleet.cloud.loop.retrain import TrainSpec, retrain
    from edgefleet.core.bundle import Bundle
    from edgefleet.core.signing import SigningKey

    signing_key = SigningKey.load(key)
    store = trust_store(trust)
    if signing_key.key_id not in store.key_ids:
        raise EdgefleetError(f"--key {key} (key id {signing_key.key_id}) is not among the trusted keys: the new "
                             f"bundle signed with it would not verify")
    Bundle.open(serving).verify(store)
    result = retrain(TrainSpec(serving, train_fn, dataset, mode, reference, torch_model), out_dir, signing_key)
    from rich.markup import escape

    cost, data = result.training["cost"], result.training["dataset"]
    out.print(escape(f"{result.bundle.name} v{result.bundle.version} ({mode}) -> {out_dir}: dataset {data['name']} "
              f"v{data['version']} ({data['fingerprint'][:12]}), {cost['rows_seen']} rows seen, {cost['wall_s']:.1f} s "
              f"wall, {cost['cpu_s']:.1f} s CPU, peak RSS {cost['peak_rss_bytes'] / 2**20:.0f} MiB"), highlight=False,
              emoji=False)
