"""The typer application, its shared options, and the trust-store lookup every command uses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from edgefleet.core import config
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.signing import TrustStore

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Run ML models on fleets of small devices.")
keys_app = typer.Typer(no_args_is_help=True, help="Signing keys.")
app.add_typer(keys_app, name="keys")
out = Console()
err_console = Console(stderr=True)

TrustOption = Annotated[
    list[Path] | None,
    typer.Option("--trust", "-t", help=f"Trusted public key (.pub) or directory of them; repeatable. "
                                        f"Default: ${config.TRUST_ENV}."),
]
BundleArg = Annotated[Path, typer.Argument(help="Bundle directory or .tar.gz")]


def trust_store(paths: list[Path] | None) -> TrustStore:
    chosen = list(paths or config.trusted_key_paths())
    if not chosen:
        raise EdgefleetError(f"no trusted keys: pass --trust KEY.pub (or a directory), or set ${config.TRUST_ENV}")
    return TrustStore.from_paths(chosen)
