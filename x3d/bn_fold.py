"""BatchNorm folding: an inference-only rewrite of an X3D that keeps its outputs to float tolerance.

X3D is memory-bound on CPUs: each eval-mode BatchNorm3d is one more full read and write of an
activation tensor that the convolution before it has just written. ``fold_batchnorm`` moves
every BatchNorm's affine transform into the weights and bias of the convolution that feeds it,
so the forward does the same arithmetic in fewer passes over memory. The checkpoint, its key
names and the training graph are untouched: the rewrite works on a copy, after loading.
(The fusion of per-view scores into a video's is another thing: ``x3d.protocol.fuse_views``.)
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .model import ConvBN

__all__ = ["fold_batchnorm", "count_batchnorms"]


@torch.no_grad()
def _folded_conv(conv: nn.Conv3d, bn: nn.BatchNorm3d) -> nn.Conv3d:
    """``conv`` followed by eval-mode ``bn`` as one convolution with a bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv3d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` whose ConvBN units carry their BatchNorm in the conv.

    The folded BatchNorm becomes ``nn.Identity``, so module names (and anything that walks
    them) stay as they were. Only valid for inference: the running statistics are baked in.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, ConvBN) and isinstance(getattr(module, "bn", None), nn.BatchNorm3d):
            module.conv = _folded_conv(module.conv, module.bn)
            module.bn = nn.Identity()
    return folded


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
