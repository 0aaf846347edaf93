"""`edgefleet loop stage freshness`: the serving model's accuracy on captured data by the data's age
(cloud/loop/freshness.py), the answer to "how often should this model be updated". Registered on
loop_commands' stage_app, in its own module beside the other stages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.cli.app import TrustOption, out, trust_store
from edgefleet.cli.loop_commands import stage_app
from edgefleet.cli.windows_commands import parse_time
from edgefleet.core.errors import EdgefleetError


@stage_app.command("freshness")
def freshness(
    serving: Annotated[Path, typer.Option("--serving", help="The serving model's bundle (directory or .tar.gz)")],
    dataset: Annotated[Path, typer.Option("--dataset", help="Directory from `edgefleet dataset export` (or its "
                                                            ".npz): inputs, labels y, captured_at")],
    out_path: Annotated[Path, typer.Option("--out", help="Write the report here (JSON)")],
    bucket: Annotated[str, typer.Option("--bucket", help="Age bucket: 1d, 6h, 30m, 2w...")] = "1d",
    trained_at: Annotated[str | None, typer.Option("--trained-at", help="When the model was trained: Unix seconds "
                                                                        "or ISO 8601 (default: the bundle's "
                                                                        "created_at)")] = None,
    min_accuracy: Annotated[float | None, typer.Option("--min-accuracy", min=0.0, max=1.0,
                                                       help="Say when accuracy is expected to fall below "
                                                            "this")] = None,
    max_mae: Annotated[float | None, typer.Option("--max-mae", min=0.0, help="Regression: say when the mean "
                                                                             "absolute error is expected to "
                                                                             "rise above this")] = None,
    min_rows: Annotated[int, typer.Option("--min-rows", min=1, help="Rows a bucket needs to count towards the "
                                                                    "trend (two such buckets are needed)")] = 20,
    plot_path: Annotated[Path | None, typer.Option("--plot", help="Also draw the buckets and trend as a PNG")] = None,
    backend: Annotated[list[str] | None, typer.Option("--backend", "-b", help="Backend or target, in order "
                                                                              "(default: the bundle's own)")] = None,
    trust: TrustOption = None,
) -> None:
    """Accuracy (or MAE) of the serving model per age bucket of captured data, its trend, and when to update."""
    from edgefleet.cloud.loop.freshness import FreshnessOptions, parse_bucket, plot, render_table
    from edgefleet.cloud.loop.freshness import freshness as run_freshness

    options = FreshnessOptions(bucket_s=parse_bucket(bucket), trained_at=parse_time(trained_at, "--trained-at"),
                               min_accuracy=min_accuracy, max_mae=max_mae, min_rows=min_rows,
                               backends=tuple(backend) if backend else None)
    report = run_freshness(serving, dataset, trust=trust_store(trust), options=options)
    try:
        out_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    except OSError as err:
        raise EdgefleetError(f"--out {out_path}: cannot write it ({err.strerror or err})") from err
    if plot_path is not None:
        plot(report, plot_path)
    out.print(render_table(report))
    out.print(report["verdict"]["text"], highlight=False, markup=False)
    out.print(f"report written to {out_path}", highlight=False, markup=False)
