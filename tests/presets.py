"""``x3d_test``: a tiny X3D preset with random weights, so whole jobs run on a CPU in seconds.

Importing this module registers the preset (``x3d.register_preset``). That is all an
in-process job needs: ``ModelSpec`` carries the ``Preset`` object itself to Ray workers. A
``python submit.py`` subprocess sees it through the ``X3D_PRESETS_MODULE=tests.presets``
hook of submit.py.

The weights are random but not degenerate: BatchNorm statistics and affine parameters are
randomised and the classifier scaled up, so different videos get visibly different
predictions (``tests/cluster`` asserts that they do).
"""

from __future__ import annotations

from pathlib import Path

import torch

import x3d

NAME = "x3d_test"
CLIP_LEN = 4
VIEWS = 30

X3D_TEST = x3d.register_preset(
    x3d.Preset(
        name=NAME,
        description="tiny random-weight X3D for tests",
        arch=x3d.Architecture(base_width=8, base_depths=(1, 1, 1, 1), head_hidden=32, num_classes=400),
        protocols={
            "mmaction2": x3d.TestProtocol(
                "mmaction2", clip_len=CLIP_LEN, frame_interval=2, num_clips=10, resize_short=32, crop_size=32
            ),
        },
        weights=(),
        published=(
            x3d.PublishedResult("test", "mmaction2", 30, 50.0),
            x3d.PublishedResult("test", "mmaction2", 10, 40.0, 60.0),
        ),
    )
)


def random_model(seed: int = 0, preset: x3d.Preset = X3D_TEST) -> x3d.X3D:
    """``preset``'s network with seeded random weights and BN statistics, in eval mode.

    A freshly initialised net with unit BN statistics shrinks its activations stage by stage
    until every video gets the same scores. So the statistics are first measured on random
    input (train-mode forward passes), then jittered, and the classifier is scaled up.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = x3d.build_model(preset)
    proto = preset.protocol()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    with torch.no_grad():
        for bn in bns:
            n = bn.num_features
            bn.weight.copy_(torch.rand(n, generator=generator) + 0.5)
            bn.bias.copy_(torch.randn(n, generator=generator) * 0.2)
            bn.momentum = None  # cumulative average over the calibration batches
            bn.reset_running_stats()
        model.train()
        for _ in range(2):
            model(torch.randn(4, 3, proto.clip_len, proto.crop_size, proto.crop_size, generator=generator))
        model.eval()
        for bn in bns:
            n = bn.num_features
            bn.running_mean.add_(torch.randn(n, generator=generator) * 0.1 * bn.running_var.sqrt())
            bn.running_var.mul_(torch.rand(n, generator=generator) * 0.5 + 0.75)
            bn.momentum = 0.1
        # Centre the classifier on the calibration features, so no class wins for every input.
        hidden = []
        hook = model.cls_head.fc2.register_forward_hook(lambda mod, inp, out: hidden.append(inp[0]))
        model(torch.randn(8, 3, proto.clip_len, proto.crop_size, proto.crop_size, generator=generator))
        hook.remove()
        fc2 = model.cls_head.fc2
        fc2.weight.mul_(20.0)
        fc2.bias.copy_(-fc2.weight @ hidden[0].mean(0))
    return model

def write_checkpoint(path: str | Path, seed: int = 0, preset: x3d.Preset = X3D_TEST) -> Path:
    """An MMAction2-layout checkpoint of ``random_model(seed)``."""
    return x3d.checkpoints.save_mmaction2_checkpoint(random_model(seed, preset), path)
