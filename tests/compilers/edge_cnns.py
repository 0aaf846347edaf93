"""Edge CNNs for the native backend's tests and benchmarks, built here from public architectures with
random weights (no downloads): an EfficientNet-Lite / MobileNetV3-class CNN (MBConv blocks: 1x1 expand,
depthwise 3x3 or 5x5, squeeze-excite, 1x1 project, residual; BatchNorm, ReLU6 and HardSwish,
AdaptiveAvgPool2d(1) + flatten) and a ResNet-class CNN (BasicBlocks with BatchNorm and residual adds,
1x1 stride-2 shortcuts). BatchNorm statistics are set to non-trivial values (`randomize_batch_norm`), so
folding them is actually exercised. Both are eval-mode and take 3 x SIZE x SIZE images."""

from __future__ import annotations

import torch
from torch import nn

SIZE = 64


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
            act: type[nn.Module] | None = nn.ReLU6) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """x * sigmoid(fc(relu(fc(gap(x))))) with 1x1 convs as the fully connected layers (torchvision's)."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.expand(torch.relu(self.reduce(self.pool(x)))))


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, act: type[nn.Module]) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = [conv_bn(cin, hidden, 1, act=act)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, kernel, stride, groups=hidden, act=act),
                   SqueezeExcite(hidden, max(8, hidden // 4)), conv_bn(hidden, cout, 1, act=None)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


class EfficientLiteNet(nn.Module):
    """3 x 64 x 64 -> 10 logits; MBConv stages 16-24-40-80, ~0.1M parameters."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        hs, r6 = nn.Hardswish, nn.ReLU6
        self.features = nn.Sequential(
            conv_bn(3, 16, 3, 2, act=hs), MBConv(16, 16, 3, 1, 1, r6),
            MBConv(16, 24, 3, 2, 4, r6), MBConv(24, 24, 3, 1, 3, r6),
            MBConv(24, 40, 5, 2, 3, hs), MBConv(40, 40, 5, 1, 3, hs),
            MBConv(40, 80, 3, 2, 4, hs), MBConv(80, 80, 3, 1, 2, hs), conv_bn(80, 160, 1, act=hs))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(160, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride, act=nn.ReLU), conv_bn(cout, cout, 3, act=None))
        self.shortcut = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNetLike(nn.Module):
    """3 x 64 x 64 -> 10 logits; ResNet-18's layout at a quarter width and one block per stage past the first."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 1, act=nn.ReLU)
        self.stages = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 16, 1), BasicBlock(16, 32, 2),
                                    BasicBlock(32, 64, 2), BasicBlock(64, 128, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def randomize_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (fresh ones are the identity); eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
    return model.eval()


def build(name: str, seed: int = 0) -> nn.Module:
    """"efficient-lite" or "resnet", with seeded random weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    model = {"efficient-lite": EfficientLiteNet, "resnet": ResNetLike}[name]()
    return randomize_batch_norm(model, seed)
