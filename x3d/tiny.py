"""``x3d_tiny``: the bundled self-check model, trained on the synthetic sample dataset.

The same X3D blocks as X3D-S/M with fewer channels and blocks and a 64 px, 8-frame input, so
it runs anywhere in seconds. Its weights ship inside the package (x3d/data/x3d_tiny_sample.pth,
about 0.9 MB); bench/train_tiny.py makes them reproducibly from x3d.sample_data and measured
the numbers in ``published``. ``python submit.py --dataset sample`` scores it on the sample
val split through the full job, so those numbers are what a healthy installation reproduces.

Importing this module registers the preset.
"""

from __future__ import annotations

from pathlib import Path

from .presets import Architecture, Preset, PublishedResult, TestProtocol, Weights, register_preset
from .sample_data import CLASSES

__all__ = ["X3D_TINY", "TINY_CHECKPOINT"]

#: the shipped checkpoint (MMAction2 layout), next to the label map it was trained for
TINY_CHECKPOINT = Path(__file__).resolve().parent / "data" / "x3d_tiny_sample.pth"
_SHA256_PREFIX = "e9319f81"  # first 8 hex of the file's sha256, printed by bench/train_tiny.py

_SOURCE = "bench/train_tiny.py on sample val"

X3D_TINY = register_preset(
    Preset(
        name="x3d_tiny",
        description="X3D-tiny 8x4x1 trained on the synthetic motion dataset (x3d.sample_data); self-check model",
        arch=Architecture(
            base_width=16,
            gamma_d=1.0,
            base_depths=(1, 1, 2, 1),
            head_hidden=128,
            num_classes=len(CLASSES),
            dropout=0.2,
        ),
        protocols={
            "mmaction2": TestProtocol(
                "mmaction2", clip_len=8, frame_interval=4, num_clips=10, resize_short=64, crop_size=64
            ),
        },
        weights=(Weights(url=TINY_CHECKPOINT.as_uri(), layout="mmaction2", sha256_prefix=_SHA256_PREFIX),),
        published=(
            PublishedResult(_SOURCE, "mmaction2", 10, 91.0, dataset="sample-val"),
            PublishedResult(_SOURCE, "mmaction2", 30, 91.5, dataset="sample-val"),
        ),
        classes_file="sample_labels.txt",
        parameters=None,
    )
)
