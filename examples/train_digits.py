"""A training script as a user writes one: train a small CNN on the digits, then hand it to edgefleet.

    python examples/train_digits.py --out runs/digits --key runs/keys/release.key

Writes runs/digits/bundle (signed), the held-out split as test_x.npy / test_y.npy for
`edgefleet predict`, and model.pt + data.npz for `edgefleet compress`. Everything it uses ships
with scikit-learn: it runs offline.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from edgefleet.cloud.digits import CLASS_NAMES, PREPROCESSING, load_splits, train_digits_cnn
from edgefleet.cloud.training import accuracy
from edgefleet.compilers import export_torch
from edgefleet.core.signing import SigningKey

console = Console()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/digits"))
    parser.add_argument("--key", type=Path, required=True, help="Ed25519 private key (edgefleet keys generate)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--version", type=int, default=1)
    args = parser.parse_args()

    splits = load_splits()
    console.print(f"digits: {len(splits.x_train)} training and {len(splits.x_test)} held-out images (8x8)")
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("training", total=args.epochs)
        model = train_digits_cnn(splits, epochs=args.epochs,
                                 on_epoch=lambda epoch, loss: progress.update(
                                     task, completed=epoch, description=f"training (loss {loss:.3f})"))
    console.print(f"trained: torch accuracy on the held-out split {accuracy(model, splits.x_test, splits.y_test):.4f}")

    bundle_dir = args.out / "bundle"
    if bundle_dir.exists():
        shutil.rmtree(bundle_dir)
    bundle = export_torch(
        model, splits.x_train[:4], bundle_dir, name="digits-cnn", version=args.version,
        reference_data=splits.x_train, labels=splits.y_train, eval_data=(splits.x_test, splits.y_test),
        class_names=CLASS_NAMES, input_names=["pixels"], output_names=["logits"], preprocessing=PREPROCESSING,
        signing_key=SigningKey.load(args.key),
        model_card={"intended_use": "demo: classify 8x8 handwritten digits",
                    "training_data": "scikit-learn digits (UCI), stratified 75% split"},
    )
    artifact = bundle.artifacts[0]
    np.save(args.out / "test_x.npy", splits.x_test)
    np.save(args.out / "test_y.npy", splits.y_test)
    # For `edgefleet compress`: the trained weights, and the data with two slices a user might care
    # about (digits written with little or much ink), so the report shows what each step costs them.
    torch.save(model.state_dict(), args.out / "model.pt")
    ink = splits.x_test.reshape(len(splits.x_test), -1).mean(axis=1)
    np.savez(args.out / "data.npz", x_train=splits.x_train, y_train=splits.y_train, x_test=splits.x_test,
             y_test=splits.y_test, slice_light_ink=ink < np.quantile(ink, 0.25),
             slice_heavy_ink=ink > np.quantile(ink, 0.75))
    console.print(
        f"exported {bundle.name} v{bundle.version} to {bundle.root}: {artifact['size'] / 1024:.1f} KiB ONNX, "
        f"max abs error vs torch {artifact['numeric_error']['max_abs']:.2g} on "
        f"{artifact['numeric_error']['samples']} samples, signed"
    )


if __name__ == "__main__":
    main()
