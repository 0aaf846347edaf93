"""An update job as the updater runs and journals it, and the rules around it without I/O: its record
(a Command in the journal's JSON form and back), the refusals of a rollback command, how a stage's
exception becomes a status reason code, and where a download is kept.

Split out of updater.py, which holds the stages and the crash-recovery rule of each.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgefleet.core.errors import EdgefleetError
from edgefleet.core.ota import BundleRef, Command
from edgefleet.edge_runtime.health import UpdateFailed
from edgefleet.edge_runtime.predictor import Predictor
from edgefleet.edge_runtime.slots import Slot

log = logging.getLogger("edgefleet.edge_runtime.updater")


@dataclass
class Job:
    """One command under way; `record` is what the journal holds (command, stage, slot ids)."""

    command: Command
    record: dict
    new_slot: Slot | None = None
    predictor: Predictor | None = None  # the new model, before it serves
    old_predictor: Predictor | None = None  # the model it replaced, kept for an instant swap back
    detail: dict = field(default_factory=dict)


def rollback_refusal(command: Command, current: Slot | None, previous: Slot | None) -> UpdateFailed | None:
    """Why a rollback command must not run here, or None: it must name the bundle it undoes, that bundle
    must be the one served, and there must be a previous slot to go back to."""
    named = command.bundle
    if named is None:
        return UpdateFailed("unnamed_rollback", "the rollback names no bundle to undo, so it could undo a model "
                                                "its deployment never installed here; refused")
    if current is None or (current.name, current.version) != (named.name, named.version):
        serving = f"{current.name} v{current.version}" if current else "nothing"
        return UpdateFailed("not_current", f"the rollback undoes {named.name} v{named.version}, but this device "
                                           f"serves {serving}: nothing of that deployment to roll back")
    if previous is None:
        return UpdateFailed("no_previous", "there is no previous slot to roll back to")
    return None


def as_failure(err: Exception, stage: str | None) -> UpdateFailed:
    """A stage's exception as a Status reason: its `reason` code (DownloadError, VerificationError), else
    the error class in snake case (BackendError -> backend_error), else "error" for a bug."""
    if isinstance(err, UpdateFailed):
        return err
    if not isinstance(err, EdgefleetError):
        log.error("unexpected error at %s", stage, exc_info=err)
        return UpdateFailed("error", f"{type(err).__name__}: {err}")
    reason = getattr(err, "reason", None)
    if not isinstance(reason, str):
        reason = re.sub(r"(?<!^)(?=[A-Z])", "_", type(err).__name__).lower()
    return UpdateFailed(reason, str(err))


def archive_name(ref: BundleRef) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", ref.name).strip("._")[:64] or "bundle"
    return f"{safe}-v{ref.version}.tar.gz"


def partial_path(dest: Path) -> Path:
    return dest.with_suffix(dest.suffix + ".partial")


def command_record(command: Command) -> dict:
    return asdict(command)


def command_from_record(data: dict) -> Command:
    bundle = data.get("bundle")
    return Command(**{**data, "bundle": BundleRef(**bundle) if bundle else None})


def jsonable(value: object) -> object:
    """Detail dicts go into JSON with allow_nan=False: numpy scalars to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
