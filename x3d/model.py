"""X3D in plain PyTorch, with MMAction2's module names so its checkpoints load unchanged.

The network reads top-down: stem (spatial 1x3x3 conv, then depthwise temporal conv), four
stages of bottleneck blocks with depthwise 3x3x3 convs, squeeze-excitation on every other
block and Swish after it, a 1x1x1 conv5, and an MLP head over globally pooled features.
Every width and depth derives from the expansion factors in ``Architecture``; the two
rounding rules are the small functions below.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .presets import Architecture, Preset, get_preset

__all__ = ["X3D", "X3DBackbone", "X3DHead", "build_model", "round_width", "round_depth"]


def round_width(width: float, multiplier: float | None, minimum: int = 8, divisor: int = 8) -> int:
    """Scale a channel count and snap it to a multiple of ``divisor`` (never below 90%)."""
    if not multiplier:
        return int(width)
    scaled = width * multiplier
    snapped = max(minimum, int(scaled + divisor / 2) // divisor * divisor)
    if snapped < 0.9 * scaled:
        snapped += divisor
    return int(snapped)


def round_depth(depth: int, multiplier: float) -> int:
    """Scale a block count upwards; float64 keeps 2.2 * 5 == 11 exact."""
    return int(math.ceil(multiplier * depth))


class ConvBN(nn.Sequential):
    """Conv3d (no bias) + BatchNorm3d [+ ReLU]; the child names match mmcv's ConvModule."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0, groups=1, relu=True, bn=True):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        if bn:
            self.bn = nn.BatchNorm3d(cout)
        if relu:
            self.activate = nn.ReLU(inplace=True)


class SqueezeExcite(nn.Module):
    """Channel gating from a global (T, H, W) average; 1x1x1 convs with bias, as in X3D."""

    def __init__(self, channels: int, ratio: float):
        super().__init__()
        squeezed = round_width(channels, ratio)
        self.avg_pool = nn.AdaptiveAvgPool3d(1)
        self.fc1 = nn.Conv3d(channels, squeezed, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv3d(squeezed, channels, 1, bias=True)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * gate


class Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class BlockX3D(nn.Module):
    """1x1x1 expand -> depthwise 3x3x3 -> [SE] -> Swish -> 1x1x1 project, plus shortcut."""

    def __init__(self, cin: int, inner: int, cout: int, spatial_stride: int, se_ratio: float | None):
        super().__init__()
        self.conv1 = ConvBN(cin, inner, 1)
        self.conv2 = ConvBN(
            inner, inner, 3, stride=(1, spatial_stride, spatial_stride), padding=1, groups=inner, relu=False
        )
        self.se_module = SqueezeExcite(inner, se_ratio) if se_ratio else None
        self.swish = Swish()
        self.conv3 = ConvBN(inner, cout, 1, relu=False)
        needs_projection = spatial_stride != 1 or cin != cout
        self.downsample = (
            ConvBN(cin, cout, 1, stride=(1, spatial_stride, spatial_stride), relu=False)
            if needs_projection
            else None
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        if self.se_module is not None:
            y = self.se_module(y)
        y = self.conv3(self.swish(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(y + shortcut)


class X3DBackbone(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        stem = round_width(arch.base_width, arch.gamma_w)
        kt = arch.stem_temporal_kernel
        self.conv1_s = ConvBN(3, stem, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), relu=False, bn=False)
        self.conv1_t = ConvBN(stem, stem, (kt, 1, 1), padding=(kt // 2, 0, 0), groups=stem)

        cin = stem
        self.stage_names: list[str] = []
        for i, base_depth in enumerate(arch.base_depths):
            cout = stem * 2**i
            inner = int(cout * arch.gamma_b)
            blocks = []
            for b in range(round_depth(base_depth, arch.gamma_d)):
                # se_style "half": squeeze-excitation on even-indexed blocks of each stage.
                se = arch.se_ratio if b % 2 == 0 else None
                blocks.append(BlockX3D(cin if b == 0 else cout, inner, cout, 2 if b == 0 else 1, se))
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            cin = cout
        self.out_channels = int(cin * arch.gamma_b)
        self.conv5 = ConvBN(cin, self.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1_t(self.conv1_s(x))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.conv5(x)


class X3DHead(nn.Module):
    """Global average pool, then fc1 (no bias) -> ReLU -> dropout -> fc2: MMAction2's X3DHead."""

    def __init__(self, in_channels: int, hidden: int, num_classes: int, dropout: float):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc1 = nn.Linear(in_channels, hidden, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.pre_logits(x))

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The 2048-d hidden layer fc2 reads, ``relu(fc1(pool(x)))``: dropout is the identity in eval."""
        return self.relu(self.fc1(self.pool(x).flatten(1)))

    def classify(self, hidden: torch.Tensor) -> torch.Tensor:
        """The logits from the hidden layer: fc2 after dropout."""
        return self.fc2(self.dropout(hidden))


class X3D(nn.Module):
    """Backbone + head. ``forward((N, 3, T, H, W) float) -> (N, num_classes)`` logits.

    As timm's models split it: ``forward_features`` (the backbone's feature maps) and
    ``forward_head`` (the logits, or with ``pre_logits`` the head's hidden layer), so a caller
    that wants a clip's embedding takes it from the same forward as its logits
    (``x3d.features.with_clip_features``).
    """

    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        self.backbone = X3DBackbone(arch)
        self.cls_head = X3DHead(self.backbone.out_channels, arch.head_hidden, arch.num_classes, arch.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's feature maps ``(N, out_channels, T', H', W')``."""
        return self.backbone(x)

    def forward_head(self, maps: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The logits ``(N, classes)`` of ``forward_features``' maps, or with ``pre_logits`` the
        head's hidden layer ``(N, head_hidden)`` (``X3DHead.classify`` turns it into the logits)."""
        return self.cls_head.pre_logits(maps) if pre_logits else self.cls_head(maps)


def build_model(preset: str | Preset = "x3d_s") -> X3D:
    """An X3D with freshly initialised weights for ``preset``, in eval mode.

    The model carries its preset (``model.preset``), so ``predict_video(model, path)`` scores
    with that preset's test protocol and cannot silently use another model's frame count or size.
    """
    chosen = get_preset(preset)
    model = X3D(chosen.arch).eval()
    model.preset = chosen
    return model
