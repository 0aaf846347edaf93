"""New versions of the digits bundle for the update stage of the demo: a retrained v2, and a v3 whose
weights were damaged after export but which is correctly signed — the kind of release a staged rollout
must catch: it verifies, then fails the device's self-test on its golden examples."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgefleet.cloud.digits import CLASS_NAMES, PREPROCESSING, load_splits, train_digits_cnn
from edgefleet.compilers import export_torch
from edgefleet.core.bundle import Bundle, sign, write_manifest
from edgefleet.core.signing import SigningKey


def retrained(out: Path, key: SigningKey, version: int, seed: int) -> Bundle:
    splits = load_splits()
    model = train_digits_cnn(splits, epochs=15, seed=seed)
    shutil.rmtree(out, ignore_errors=True)
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.export's own deprecation chatter
        return export_torch(model, splits.x_train[:4], out, name="digits-cnn", version=version,
                            reference_data=splits.x_train, labels=splits.y_train,
                            eval_data=(splits.x_test, splits.y_test), class_names=CLASS_NAMES,
                            input_names=["pixels"], output_names=["logits"], preprocessing=PREPROCESSING,
                            signing_key=key, label=f"digits-cnn v{version} (retrained, seed {seed})")


def damaged(source: Path, out: Path, key: SigningKey, version: int) -> Bundle:
    """A copy of `source` as `version` with every weight scaled by 1.5 after export, signed again."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(source, out)
    model = onnx.load(str(out / "model.onnx"))
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.dtype == np.float32:
            tensor.CopyFrom(numpy_helper.from_array(values * np.float32(1.5), tensor.name))
    onnx.save(model, str(out / "model.onnx"))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.update(version=version, label=f"digits-cnn v{version} (weights damaged after export)")
    write_manifest(out, manifest)
    sign(out, key)
    return Bundle.open(out)
