"""The `threads` option on whole models built here (tests/compilers/edge_cnns.py's EfficientNet-Lite- and
ResNet-class CNNs and a wide plain CNN, fp32 and static int8 QDQ, random weights), compiled for the native
target: at 2 and 3 threads every output is bit-identical to 1 thread, one image and a batch, on
back-to-back runs (workers kept awake between nodes) and after the pool's workers fell asleep. A node is
cut into several parts per thread, claimed one at a time; the parts sit on the kernels' tile
boundaries, so no sum changes order whichever thread runs a part."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgefleet.cloud.compress.quantize import quantize_static_int8
from edgefleet.compilers import export_torch
from edgefleet.compilers.compile import compile_bundle
from edgefleet.core.signing import SigningKey
from edgefleet.edge_runtime.backends.native import NativeBackend
from tests.compilers import edge_cnns


def wide_cnn() -> torch.nn.Module:
    """Plain 3x3 convs of 32-64 channels with pooling (the bench's wide CNN, narrower)."""
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for cin, cout, pool in ((3, 32, False), (32, 32, True), (32, 64, False), (64, 64, True)):
        layers += [torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.ReLU()]
        if pool:
            layers.append(torch.nn.MaxPool2d(2))
    return torch.nn.Sequential(*layers, torch.nn.Flatten(), torch.nn.Linear(64 * 16 * 16, 10)).eval()


MODELS = {"efficient-lite": lambda: edge_cnns.build("efficient-lite"), "resnet": lambda: edge_cnns.build("resnet"),
          "wide": wide_cnn}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((20, 3, edge_cnns.SIZE, edge_cnns.SIZE)).astype(np.float32)


@pytest.fixture(scope="module")
def artifacts(images: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The native artifact of each model, fp32 and int8."""
    key = SigningKey.generate()
    out: dict[str, Path] = {}
    for name, build in MODELS.items():
        folder = tmp_path_factory.mktemp(name)
        fp32 = export_torch(build(), images[:4], folder / "fp32", name=name, version=1, reference_data=images[:16],
                            input_names=["image"], output_names=["logits"], task="classification",
                            signing_key=key).root
        int8 = quantize_static_int8(fp32, folder / "int8", images[:16], signing_key=key).bundle.root
        for label, source in ((name, fp32), (f"{name}-int8", int8)):
            compiled = compile_bundle(source, ["native"], folder / f"{label}-native", signing_key=key)
            (result,) = compiled.compiled
            out[label] = compiled.bundle.path(result.artifact["path"])
    return out


@pytest.mark.parametrize("label", [f"{name}{suffix}" for name in MODELS for suffix in ("", "-int8")])
def test_whole_model_same_bits_at_any_thread_count(label: str, artifacts: dict, images: np.ndarray) -> None:
    backends = {}
    for threads in (1, 2, 3):
        backends[threads] = NativeBackend()
        backends[threads].load(artifacts[label], {"threads": threads})
    one, batch = {"image": images[16:17]}, {"image": images[16:20]}
    want_one, want_batch = backends[1].run(one)["logits"], backends[1].run(batch)["logits"]
    assert np.isfinite(want_one).all() and want_one.std() > 0
    for threads in (2, 3):
        backend = backends[threads]
        for _ in range(5):  # back to back: the workers stay awake between nodes and runs
            np.testing.assert_array_equal(backend.run(one)["logits"], want_one)
        np.testing.assert_array_equal(backend.run(batch)["logits"], want_batch)
        time.sleep(0.02)  # past the between-runs poll: the next run starts with its workers asleep
        np.testing.assert_array_equal(backend.run(one)["logits"], want_one)
    for backend in backends.values():
        backend.close()
