"""The last step of every way a model enters edgefleet (export from torch, import of a model file): the
bundle's files and manifest around a model artifact already in place.

    draft = BundleDraft(name=..., version=..., inputs=..., outputs=..., task=..., artifact=...,
                        golden_inputs=..., golden_outputs=..., atol=..., rtol=..., step=...)
    bundle = write_bundle(out_dir, draft, signing_key=key)

`write_bundle` writes into `out_dir`, which already holds the model's files (the artifact's `path`, plus
any external data): `golden.npz` (inputs under `inputs/<name>`, expected outputs under
`outputs/<name>`), `profile.json` when reference data is given (the declared inputs' feature histograms
and the task's output summaries: compilers/profile_plan.py, core/profile.py; every other input is listed
under "unprofiled" with the reason), then
`manifest.json` (identity, interface, the artifact, golden entry, metrics, lineage with the dataset
fingerprint and the one step that made the bundle, model card) and, with a key, `signature.json`. The
caller has checked the numbers; the writer only records them. Golden inputs made up from the schema
rather than taken from data are `"generated": true` in the golden entry and said so in the model card.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.compilers.calibration import confidence_calibration
from edgefleet.compilers.profile_plan import TASKS, FeatureNames, ProfilePlan, plan_profile, unprofilable
from edgefleet.core import bundle as bundle_io
from edgefleet.core.bundle import Bundle
from edgefleet.core.canonical import format_time, sha256_hex, utc_now
from edgefleet.core.profile import DEFAULT_BINS
from edgefleet.core.schema import TensorSpec, sample_count
from edgefleet.core.signing import DEFAULT_VALIDITY, SigningKey

log = logging.getLogger(__name__)

__all__ = ["TASKS", "BundleDraft", "fingerprint", "golden_count", "plan_for", "unprofilable", "write_bundle"]
GENERATED_NOTE = ("The golden examples were generated from the input schema (no reference data was given): "
                  "they check that a device computes what the source runtime computed, not that the model is "
                  "right on real inputs. No reference profile: drift monitoring needs reference data.")


@dataclass(frozen=True)
class BundleDraft:
    """Everything the manifest records that the writer cannot work out itself."""

    name: str
    version: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    task: str  # one of TASKS
    postprocess: str  # "softmax" (the first output holds logits) or "none"
    artifact: dict  # the model's manifest entry; its `path` is a file already in out_dir
    golden_inputs: dict[str, np.ndarray]
    golden_outputs: dict[str, np.ndarray]
    atol: float
    rtol: float
    step: dict  # the lineage step that made the bundle ("export", "import"), without its time
    generated: bool = False  # golden inputs made up from the schema, not taken from data
    class_names: Sequence[str] | None = None
    label: str = ""
    preprocessing: str = ""
    reference: dict[str, np.ndarray] | None = None  # the reference inputs: profile and dataset fingerprint
    scores: np.ndarray | None = None  # the first output on the reference inputs (a classifier's profile)
    reference_outputs: Sequence[Mapping[str, np.ndarray]] = ()  # the summarised outputs, chunk by chunk
    profiled_inputs: Sequence[str] | None = None  # None: the default rule (compilers/profile_plan.py)
    feature_names: FeatureNames | None = None
    detection: Mapping | None = None  # a detector's layout as given (core/detection.py), None: inferred
    metrics: dict = field(default_factory=dict)
    # a classifier's (scores, true labels, "eval" or "reference"): its confidence calibration (core/calibration.py)
    calibration: tuple[np.ndarray, np.ndarray, str] | None = None
    parent: Mapping[str, Any] | None = None
    model_card: Mapping[str, Any] | None = None
    bins: int = DEFAULT_BINS


def write_bundle(out: Path, draft: BundleDraft, *, signing_key: SigningKey | None = None,
                 validity: timedelta = DEFAULT_VALIDITY) -> Bundle:
    """Writes golden.npz, profile.json (with reference data), manifest.json and signature.json (with a key)
    into out, which holds the artifact's files already, and returns the opened bundle."""
    out = Path(out)
    plan = plan_for(draft)
    np.savez(out / "golden.npz", **{f"inputs/{k}": v for k, v in draft.golden_inputs.items()},
             **{f"outputs/{k}": v for k, v in draft.golden_outputs.items()})
    golden: dict[str, Any] = {"path": "golden.npz", "count": golden_count(draft.inputs, draft.golden_inputs),
                              "atol": draft.atol, "rtol": draft.rtol}
    if draft.generated:
        golden["generated"] = True
    manifest: dict[str, Any] = {
        "name": draft.name,
        "version": int(draft.version),
        "label": draft.label or f"{draft.name} v{draft.version}",
        "created_at": format_time(utc_now()),
        "interface": {
            "inputs": [s.to_dict() for s in draft.inputs],
            "outputs": [s.to_dict() for s in draft.outputs],
            "task": draft.task,
            "postprocess": draft.postprocess,
            "class_names": list(draft.class_names) if draft.class_names is not None else None,
            "preprocessing": draft.preprocessing,
            "profiled_inputs": plan.profiled,
        },
        "artifacts": [dict(draft.artifact)],
        "golden": golden,
        "metrics": dict(draft.metrics),
        "lineage": {
            "parent": dict(draft.parent) if draft.parent else None,
            "dataset_fingerprint": fingerprint(draft.reference) if draft.reference is not None else None,
            "steps": [{**draft.step, "at": format_time(utc_now())}],
        },
    }
    if plan.detection is not None:
        manifest["interface"]["detection"] = plan.detection
    if draft.reference is not None:
        profile = plan.build(draft.inputs, draft.reference, draft.scores, draft.reference_outputs,
                             postprocess=draft.postprocess, bins=draft.bins,
                             class_names=list(draft.class_names) if draft.class_names is not None else None)
        if draft.calibration is not None and "confidence" in profile:
            scores, labels, on = draft.calibration
            profile["confidence"]["calibration"] = confidence_calibration(
                scores, labels, draft.postprocess, profile["confidence"]["edges"], on)
        (out / "profile.json").write_text(json.dumps(profile))
        manifest["reference_profile"] = {"path": "profile.json", "count": profile["count"], "bins": draft.bins}
    manifest["model_card"] = _model_card(draft)
    bundle_io.write_manifest(out, manifest)
    if signing_key is not None:
        bundle_io.sign(out, signing_key, validity)
    log.info("wrote bundle %s v%s to %s (%s, %d golden examples%s)", draft.name, draft.version, out, draft.task,
             golden["count"], ", generated" if draft.generated else "")
    return Bundle.open(out)


def golden_count(specs: Sequence[TensorSpec], inputs: Mapping[str, np.ndarray]) -> int:
    """How many examples the inputs hold: the size of the batch axis (core/schema.py `batch_axis`) of the
    first input that has one, else 1 (a model with a fixed batch takes one example at a time)."""
    return sample_count(specs, inputs)


def fingerprint(data: Mapping[str, np.ndarray]) -> str:
    """sha256 over the names, shapes and bytes of the reference data, in name order."""
    parts = b"".join(k.encode() + str(v.shape).encode() + v.tobytes() for k, v in sorted(data.items()))
    return "sha256:" + sha256_hex(parts)


def plan_for(draft: BundleDraft) -> ProfilePlan:
    """The draft's profile plan: its task, profiled inputs, column names and output summaries."""
    return plan_profile(draft.inputs, draft.outputs, draft.task, profiled_inputs=draft.profiled_inputs,
                        feature_names=draft.feature_names, detection=draft.detection, class_names=draft.class_names)


def _model_card(draft: BundleDraft) -> dict:
    card: dict[str, Any] = {
        "intended_use": "",
        "limitations": "",
        "training_data": "",
        "evaluation": dict(draft.metrics),
    }
    if draft.generated:
        card["golden_examples"] = GENERATED_NOTE
    card.update(dict(draft.model_card or {}))
    return card
