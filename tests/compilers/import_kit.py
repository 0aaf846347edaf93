"""ONNX files for the import tests, built here from public architectures (no downloads): a MobileNetV2-style
CNN (inverted residuals with depthwise convolutions), a BERT-style encoder (token ids and an attention
mask, dynamic sequence axis), a regression MLP, and hand-written graphs for unnamed dims, dtypes,
initializers listed as inputs and external data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import nn


# --- MobileNetV2-style CNN (torchvision's InvertedResidual, shrunk) ---------------------------------------
def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(conv_bn(cin, hidden, 1), conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                   conv_bn(hidden, cout, 1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


class TinyMobileNet(nn.Module):
    """32x32 RGB -> 10 logits; ~10k parameters."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 8, stride=2), InvertedResidual(8, 8, 1, 2),
                                      InvertedResidual(8, 16, 2, 4), InvertedResidual(16, 16, 1, 4),
                                      InvertedResidual(16, 24, 2, 4), conv_bn(24, 64, 1))
        self.classifier = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


class PooledMobileNet(TinyMobileNet):
    """TinyMobileNet with its global mean as a 4x4 average pool (32x32 inputs only): AveragePool and Reshape
    in ONNX rather than ReduceMean, so the native backend runs it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(nn.functional.avg_pool2d(self.features(x), 4), 1))


# --- FCOS-style detector (torchvision's FCOS head, shrunk: one level, anchor-free, one box per cell) ----------
class TinyDetector(nn.Module):
    """image [batch, 3, H, W] (any H, W) -> boxes [batch, D, 4] (x1, y1, x2, y2 in pixels) and scores
    [batch, D], one detection per cell of the stride-8 feature map: D = ceil(H/8) * ceil(W/8).

    As FCOS: a conv backbone, a shared head with a classification branch (sigmoid score of the best of
    `classes`) and a box branch predicting distances (left, top, right, bottom) from each cell's centre,
    decoded against a grid built from the feature map's own size, so H and W stay free in the export."""

    stride = 8

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(conv_bn(3, 8, stride=2), conv_bn(8, 16, stride=2), conv_bn(16, 24, stride=2))
        self.head = conv_bn(24, 24)
        self.cls = nn.Conv2d(24, classes, 3, padding=1)
        self.box = nn.Conv2d(24, 4, 3, padding=1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.head(self.backbone(image))
        n, _, h, w = features.shape
        scores = torch.sigmoid(self.cls(features)).amax(dim=1).reshape(n, h * w)
        distances = (torch.relu(self.box(features)) * self.stride).permute(0, 2, 3, 1).reshape(n, h * w, 4)
        ys = (torch.arange(h, dtype=image.dtype) + 0.5) * self.stride
        xs = (torch.arange(w, dtype=image.dtype) + 0.5) * self.stride
        centres = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1).reshape(1, h * w, 2)
        boxes = torch.cat([centres - distances[..., :2], centres + distances[..., 2:]], dim=-1)
        return boxes, scores


def detector_onnx(path: Path) -> Path:
    """TinyDetector as an ONNX file with batch, height and width dynamic (three distinct symbols)."""
    torch.manual_seed(0)
    dims = {name: torch.export.Dim(name, min=16, max=1024) for name in ("height", "width")}
    dynamic = ({0: torch.export.Dim("batch", min=1), 2: dims["height"], 3: dims["width"]},)
    return export(TinyDetector(), (torch.randn(2, 3, 64, 96),), path, ["image"], ["boxes", "scores"], dynamic)


# --- BERT-style encoder (pre-norm blocks as in timm's ViT Block, additive attention mask as in BERT) -------
class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 2), nn.GELU(), nn.Linear(dim * 2, dim))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5 + bias
        x = x + self.proj((attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.norm2(x))


class TinyEncoder(nn.Module):
    """input_ids, attention_mask (int64 [batch, tokens]) -> hidden [batch, tokens, 32], pooled [batch, 32]."""

    def __init__(self, vocab: int = 64, dim: int = 32, max_tokens: int = 64) -> None:
        super().__init__()
        self.embed, self.position = nn.Embedding(vocab, dim), nn.Embedding(max_tokens, dim)
        self.blocks = nn.ModuleList([Block(dim, 4), Block(dim, 4)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed(input_ids) + self.position(positions)[None]
        mask = attention_mask.to(x.dtype)
        bias = ((1.0 - mask) * -10000.0)[:, None, None, :]
        for block in self.blocks:
            x = block(x, bias)
        hidden = self.norm(x)
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return hidden, pooled


class RegressionMLP(nn.Module):
    def __init__(self, features: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def export(model: nn.Module, examples: tuple, path: Path, input_names: list[str], output_names: list[str],
           dynamic: tuple) -> Path:
    torch.manual_seed(0)
    model.eval()
    with torch.no_grad():
        program = torch.onnx.export(model, examples, dynamo=True, external_data=False, input_names=input_names,
                                    output_names=output_names, dynamic_shapes=dynamic, verbose=False)
    program.save(str(path))
    return path


def mobilenet_onnx(path: Path) -> Path:
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1)
    return export(TinyMobileNet(), (torch.randn(2, 3, 32, 32),), path, ["image"], ["logits"], ({0: batch},))


def encoder_onnx(path: Path) -> Path:
    torch.manual_seed(0)
    batch, tokens = torch.export.Dim("batch", min=1), torch.export.Dim("tokens", min=2, max=64)
    ids = torch.randint(0, 64, (2, 24))
    mask = torch.ones(2, 24, dtype=torch.int64)
    dynamic = ({0: batch, 1: tokens}, {0: batch, 1: tokens})
    return export(TinyEncoder(), (ids, mask), path, ["input_ids", "attention_mask"], ["hidden", "pooled"], dynamic)


def mlp_onnx(path: Path, seed: int = 0) -> Path:
    """seed: the weights' (another seed, the same interface: a retrained release of the model)."""
    torch.manual_seed(seed)
    batch = torch.export.Dim("batch", min=1)
    return export(RegressionMLP(), (torch.randn(4, 8),), path, ["features"], ["value"], ({0: batch},))


# --- hand-written graphs ------------------------------------------------------------------------------------
def unnamed_dims_onnx(path: Path) -> Path:
    """x: float32 [?, 3, -1, <empty>] -> y = relu(x) with the same unnamed dims; H and W are different
    unknowns, so 5x7 images must pass."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["?", 3, "-1", None])
    x.type.tensor_type.shape.dim[2].Clear()
    x.type.tensor_type.shape.dim[2].dim_value = -1
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, None, None])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "unnamed", [x], [y])
    return _save(graph, path)


def dtypes_onnx(path: Path) -> Path:
    """One Identity per dtype: int64, bool, float16, int8, uint8 in and out, batch axis named."""
    types = {"ids": TensorProto.INT64, "flags": TensorProto.BOOL, "half": TensorProto.FLOAT16,
             "q": TensorProto.INT8, "pixels": TensorProto.UINT8}
    inputs = [helper.make_tensor_value_info(n, t, ["batch", 4]) for n, t in types.items()]
    outputs = [helper.make_tensor_value_info(f"{n}_out", t, ["batch", 4]) for n, t in types.items()]
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"]) for n in types]
    return _save(helper.make_graph(nodes, "dtypes", inputs, outputs), path)


def initializer_input_onnx(path: Path) -> Path:
    """y = x @ w with w an initializer that is also listed as a graph input (IR 3 style)."""
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    w_input = helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "init", [x, w_input], [y],
                              initializer=[onnx.numpy_helper.from_array(w, "w")])
    return _save(graph, path)


def with_external_data(source: Path, folder: Path, location: str = "weights.bin") -> Path:
    """`source` saved again in folder with its weights (tensors of 1 KB or more) in one external data file.
    (onnxruntime cannot load a model whose small shape constants are external too.)"""
    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(source))
    path = folder / "model-ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location,
                    size_threshold=1024)
    return path


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


class RecurrentStep(torch.nn.Module):
    """torch.nn.GRU over [steps, batch, features] with its state [layers, batch, hidden] in and out."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = torch.nn.GRU(8, 16, num_layers=2)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.gru(x, state)
