"""Single-output YOLO detectors for the detection-layout tests, built here from the public architectures (no
downloads, no ultralytics package): a small Conv-BN-SiLU backbone with two levels (strides 8 and 16) and

- YOLOv5's Detect head (ultralytics/yolov5 models/yolo.py): per level a 1x1 conv to anchors x (5 + C),
  sigmoid, then the grid/anchor decode xy = (2 sigmoid - 0.5 + grid) * stride, wh = (2 sigmoid)^2 * anchor,
  concatenated to [batch, D, 5 + C] (cx, cy, w, h, objectness, class scores);
- YOLOv8's Detect head (ultralytics nn/modules/head.py): a box branch of 4 x reg_max distribution bins
  read by DFL (softmax, expectation), a class branch, anchor points from each level's own size
  (make_anchors), dist2bbox to cx, cy, w, h times the stride, concatenated to [batch, 4 + C, D];
- the same YOLOv8 head transposed to [batch, D, 4 + C] ("yolov8-transposed"), as exports made for NMS
  plugins and hand-written decoders give it.

Both build their grids from the feature maps' sizes, so the ONNX export keeps batch, height and width
dynamic: D follows the image size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from tests.compilers.import_kit import export
from tests.natural_images import CALIBRATION_PHOTOS, TEST_PHOTOS, crops

CLASS_NAMES = ["person", "bicycle", "car", "dog"]
ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119))  # YOLOv5's P3 and P4 anchors (pixels)
STRIDES = (8, 16)


def conv(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """YOLO's Conv: convolution, batch norm, SiLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.SiLU())


class Backbone(nn.Module):
    """image [batch, 3, H, W] -> feature maps at strides 8 (16 channels) and 16 (32 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.p3 = nn.Sequential(conv(3, 8, stride=2), conv(8, 16, stride=2), conv(16, 16, stride=2), conv(16, 16))
        self.p4 = nn.Sequential(conv(16, 32, stride=2), conv(32, 32))

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        p3 = self.p3(image)
        return [p3, self.p4(p3)]


class V5Detect(nn.Module):
    def __init__(self, classes: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.nc, self.no, self.na = classes, classes + 5, len(ANCHORS[0]) // 2
        self.register_buffer("anchors", torch.tensor(ANCHORS, dtype=torch.float32).view(len(ANCHORS), -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in channels)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        z = []
        for i, feature in enumerate(features):
            x = self.m[i](feature)
            bs, _, ny, nx = x.shape
            x = x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2)
            yv, xv = torch.meshgrid(torch.arange(ny, dtype=x.dtype), torch.arange(nx, dtype=x.dtype), indexing="ij")
            grid = torch.stack((xv, yv), 2).expand(1, self.na, ny, nx, 2) - 0.5
            anchor_grid = self.anchors[i].view(1, self.na, 1, 1, 2).expand(1, self.na, ny, nx, 2)
            xy, wh, conf = x.sigmoid().split((2, 2, self.nc + 1), 4)
            xy = (xy * 2 + grid) * STRIDES[i]
            wh = (wh * 2) ** 2 * anchor_grid
            z.append(torch.cat((xy, wh, conf), 4).reshape(bs, self.na * ny * nx, self.no))
        return torch.cat(z, 1)


class DFL(nn.Module):
    """Distribution focal loss integral: the expected bin of a softmax over reg_max bins, per box side."""

    def __init__(self, bins: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(bins, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(bins, dtype=torch.float32).view(1, bins, 1, 1)
        self.bins = bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.bins, a).transpose(2, 1).softmax(1)).view(b, 4, a)


class V8Detect(nn.Module):
    def __init__(self, classes: int, channels: tuple[int, ...], reg_max: int = 16) -> None:
        super().__init__()
        self.nc, self.reg_max, self.no = classes, reg_max, classes + 4 * reg_max
        self.cv2 = nn.ModuleList(nn.Sequential(conv(c, 32), nn.Conv2d(32, 4 * reg_max, 1)) for c in channels)
        self.cv3 = nn.ModuleList(nn.Sequential(conv(c, 32), nn.Conv2d(32, classes, 1)) for c in channels)
        self.dfl = DFL(reg_max)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = [torch.cat((self.cv2[i](f), self.cv3[i](f)), 1) for i, f in enumerate(features)]
        bs = x[0].shape[0]
        x_cat = torch.cat([xi.reshape(bs, self.no, -1) for xi in x], 2)
        points, strides = [], []
        for xi, stride in zip(x, STRIDES, strict=True):  # make_anchors, offset 0.5
            h, w = xi.shape[2:]
            sy, sx = torch.meshgrid(torch.arange(h, dtype=xi.dtype) + 0.5, torch.arange(w, dtype=xi.dtype) + 0.5,
                                    indexing="ij")
            points.append(torch.stack((sx, sy), -1).reshape(-1, 2))
            strides.append(torch.ones_like(sx).reshape(-1, 1) * stride)
        anchors, stride = torch.cat(points).transpose(0, 1), torch.cat(strides).transpose(0, 1)
        box, cls = x_cat.split((self.reg_max * 4, self.nc), 1)
        lt, rb = self.dfl(box).chunk(2, 1)  # dist2bbox, xywh
        x1y1, x2y2 = anchors.unsqueeze(0) - lt, anchors.unsqueeze(0) + rb
        dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * stride
        return torch.cat((dbox, cls.sigmoid()), 1)


class TinyYolo(nn.Module):
    """image [batch, 3, H, W] -> YOLOv5 [batch, D, 5 + C], YOLOv8 [batch, 4 + C, D] or transposed YOLOv8
    [batch, D, 4 + C] predictions."""

    def __init__(self, version: str, classes: int = len(CLASS_NAMES)) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.detect = V5Detect(classes, (16, 32)) if version == "yolov5" else V8Detect(classes, (16, 32))
        self.transposed = version == "yolov8-transposed"

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.detect(self.backbone(image))
        return out.transpose(1, 2) if self.transposed else out


def yolo_onnx(version: str, path: Path) -> Path:
    """TinyYolo as an ONNX file, output "output0" as the YOLO exports name it, batch/height/width dynamic."""
    torch.manual_seed(0)
    model = TinyYolo(version).eval()
    dims = {name: torch.export.Dim(name, min=32, max=1024) for name in ("height", "width")}
    dynamic = ({0: torch.export.Dim("batch", min=1), 2: dims["height"], 3: dims["width"]},)
    return export(model, (torch.randn(2, 3, 64, 96),), path, ["images"], ["output0"], dynamic)


def photos(count: int, *, seed: int, size: int = 64, test: bool = False) -> np.ndarray:
    """Natural photo crops as a YOLO export takes them: float32 [count, 3, size, size] in 0..1."""
    images = crops(TEST_PHOTOS if test else CALIBRATION_PHOTOS, count, seed=seed, size=size)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
