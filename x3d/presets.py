"""Model presets: one frozen object per published X3D checkpoint.

A preset is the single source of truth for everything that belongs to a model: the network's
hyper-parameters, the exact test protocol its published numbers were measured with, the class
names, where its weights live, and the numbers themselves. The evaluation summary's "published"
column reads from here and nowhere else, so a number can never drift away from its protocol.

Facts (sizes, offsets, URLs, accuracies) come from the published configs and model cards: MMAction2
1.2.0's and 0.x's X3D configs and metafiles, and PySlowFast's model zoo (each result names its card).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from typing import Mapping

__all__ = [
    "Architecture",
    "TestProtocol",
    "ViewPlan",
    "Weights",
    "PublishedResult",
    "Preset",
    "PRESETS",
    "get_preset",
    "kinetics400_classes",
    "SUPPORTED_VIEWS",
]

#: views -> (temporal clips, spatial crops). MMAction2 orders views crop-major.
SUPPORTED_VIEWS: Mapping[int, tuple[int, int]] = {1: (1, 1), 3: (1, 3), 10: (10, 1), 30: (10, 3)}


@dataclass(frozen=True)
class Architecture:
    """X3D expansion factors, named as in the paper and MMAction2's backbone."""

    base_width: int = 24  # output width of the stem and of stage 1
    gamma_w: float = 1.0  # width multiplier applied to base_width
    gamma_b: float = 2.25  # bottleneck (inner) expansion
    gamma_d: float = 2.2  # depth multiplier applied to base_depths
    base_depths: tuple[int, ...] = (1, 2, 5, 3)
    se_ratio: float | None = 1 / 16
    stem_temporal_kernel: int = 5
    head_hidden: int = 2048  # cls_head.fc1 output width
    num_classes: int = 400
    dropout: float = 0.5


@dataclass(frozen=True)
class ViewPlan:
    """How one video turns into `views` network inputs."""

    num_clips: int
    num_crops: int
    crop_mode: str  # "three" (left, right, middle) or "center"
    crop_size: int

    @property
    def views(self) -> int:
        return self.num_clips * self.num_crops


@dataclass(frozen=True)
class TestProtocol:
    """Test-time sampling and preprocessing, exactly as one MMAction2 config defines it.

    ``sampling`` picks the frame-index rule: ``"target_fps"`` is MMAction2 1.x's
    SampleFrames with ``target_fps`` (X3D configs since 2023), ``"legacy"`` is the 0.x rule.
    """

    name: str
    clip_len: int
    frame_interval: int
    num_clips: int
    resize_short: int
    crop_size: int
    sampling: str = "target_fps"
    target_fps: float | None = 30.0
    mean: tuple[float, float, float] = (114.75, 114.75, 114.75)
    std: tuple[float, float, float] = (57.38, 57.38, 57.38)
    center_crop_size: int | None = None  # 10-view crop; None = crop_size (the 0.x original)

    def view_plan(self, views: int) -> ViewPlan:
        """10 views = 10 clips x CenterCrop; 30 views = 10 clips x ThreeCrop (MMAction2)."""
        if views not in SUPPORTED_VIEWS:
            raise ValueError(f"views must be one of {sorted(SUPPORTED_VIEWS)}, got {views}")
        clips, crops = SUPPORTED_VIEWS[views]
        if crops == 3:
            return ViewPlan(clips, 3, "three", self.crop_size)
        return ViewPlan(clips, 1, "center", self.center_crop_size or self.crop_size)


@dataclass(frozen=True)
class Weights:
    """A downloadable checkpoint. ``sha256_prefix`` is OpenMMLab's 8-hex file-name suffix."""

    url: str
    layout: str  # "mmaction2" | "pyslowfast" | "pytorchvideo"
    sha256_prefix: str | None = None

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class PublishedResult:
    """One published number, the protocol it belongs to and the videos it was measured on."""

    source: str  # e.g. "MMAction2 1.x model card"
    protocol: str  # TestProtocol.name it was measured with
    views: int
    top1: float  # percent, as the model cards print it
    top5: float | None = None
    # The videos it was measured on; a job sets it beside a run only on a dataset tagged the same
    # (jobs/datasets.toml `published`), since a number on other videos compares with nothing.
    dataset: str = "kinetics400-val"


@dataclass(frozen=True)
class Preset:
    """Everything needed to build, load, feed and judge one X3D model."""

    name: str
    arch: Architecture
    protocols: Mapping[str, TestProtocol]
    weights: tuple[Weights, ...]
    published: tuple[PublishedResult, ...]
    classes_file: str = "kinetics400_labels.txt"
    default_protocol: str = "mmaction2"
    description: str = ""
    parameters: int | None = None  # published parameter count, checked by tests

    def protocol(self, name: str | None = None) -> TestProtocol:
        key = name or self.default_protocol
        if key not in self.protocols:
            raise ValueError(
                f"preset {self.name!r} has no protocol {key!r}; choose one of {sorted(self.protocols)}"
            )
        return self.protocols[key]

    @property
    def classes(self) -> tuple[str, ...]:
        return _read_classes(self.classes_file)

    @property
    def default_weights(self) -> Weights | None:
        return self.weights[0] if self.weights else None

    def published_for(self, views: int, protocol: str | None = None, dataset: str | None = None) -> list[PublishedResult]:
        """Published numbers for this view count (and, if given, measured on ``dataset``);
        those of ``protocol`` first."""
        proto = protocol or self.default_protocol
        hits = [p for p in self.published if p.views == views and (dataset is None or p.dataset == dataset)]
        return sorted(hits, key=lambda p: p.protocol != proto)


@lru_cache(maxsize=None)
def _read_classes(file_name: str) -> tuple[str, ...]:
    text = resources.files("x3d.data").joinpath(file_name).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def kinetics400_classes() -> tuple[str, ...]:
    """The 400 Kinetics classes, index = 0-based line of MMAction2's label_map_k400.txt."""
    return _read_classes("kinetics400_labels.txt")


def _sha_prefix(url: str) -> str | None:
    match = re.search(r"-([0-9a-f]{8})\.pth$", url)
    return match.group(1) if match else None


def _mm_weights(url: str) -> Weights:
    return Weights(url=url, layout="mmaction2", sha256_prefix=_sha_prefix(url))


_MM1 = "https://download.openmmlab.com/mmaction/v1.0/recognition/x3d/facebook/"
_MM0 = "https://download.openmmlab.com/mmaction/recognition/x3d/facebook/"
_SF = "https://dl.fbaipublicfiles.com/pyslowfast/x3d_models/"


def _x3d_protocols(clip_len: int, interval: int, resize_1x: int, resize_0x: int, sf_center: int):
    """MMAction2 1.x (default), 0.x, and a SlowFast-style 10-view centre crop variant."""
    main = TestProtocol("mmaction2", clip_len, interval, 10, resize_1x, resize_1x)
    legacy = TestProtocol(
        "mmaction2-0.x", clip_len, interval, 10, resize_0x, resize_0x, sampling="legacy", target_fps=None
    )
    slowfast_center = replace(main, name="mmaction2-center-crop", center_crop_size=sf_center)
    return {p.name: p for p in (main, legacy, slowfast_center)}


_X3D_ARCH = Architecture()

def _kinetics_x3d(size: str, clip_len: int, interval: int, resize_1x: int, resize_0x: int, sf_center: int,
                  mm_stamp: str, top1: tuple[float, float, float, float, float, float]) -> Preset:
    """One of the published Kinetics-400 X3Ds: its protocols, its three checkpoint files and the
    published top-1 at 10 and 30 views (MMAction2 1.x, MMAction2 0.x, PySlowFast)."""
    name = f"x3d_{size.lower()}"
    shape = f"{clip_len}x{interval}x1"
    cards = (("MMAction2 1.x model card", "mmaction2"), ("MMAction2 0.x model card", "mmaction2-0.x"), ("PySlowFast model zoo", "pyslowfast"))
    return Preset(
        name=name,
        description=f"X3D-{size} {shape}, Kinetics-400, weights converted from PySlowFast by OpenMMLab",
        arch=_X3D_ARCH,
        protocols=_x3d_protocols(clip_len, interval, resize_1x=resize_1x, resize_0x=resize_0x, sf_center=sf_center),
        weights=(
            _mm_weights(_MM1 + f"{name}_{shape}_facebook-kinetics400-rgb_{mm_stamp}.pth"),
            _mm_weights(_MM0 + f"{name}_facebook_{shape}_kinetics400_rgb_{mm_stamp}.pth"),
            Weights(url=_SF + f"{name}.pyth", layout="pyslowfast"),
        ),
        published=tuple(
            PublishedResult(source, protocol, views, top1[2 * i + j])
            for i, (source, protocol) in enumerate(cards)
            for j, views in enumerate((10, 30))
        ),
        parameters=3_794_322,
    )


X3D_S = _kinetics_x3d("S", 13, 6, resize_1x=182, resize_0x=192, sf_center=160, mm_stamp="20201027-623825a0",
                      top1=(73.2, 73.3, 72.7, 73.2, 73.1, 73.5))
X3D_M = _kinetics_x3d("M", 16, 5, resize_1x=256, resize_0x=256, sf_center=224, mm_stamp="20201027-3f42382a",
                      top1=(75.2, 76.4, 75.0, 75.6, 75.1, 76.2))

PRESETS: dict[str, Preset] = {p.name: p for p in (X3D_S, X3D_M)}


def register_preset(preset: Preset) -> Preset:
    """Add a preset (e.g. the bundled self-check model) to the registry."""
    PRESETS[preset.name] = preset
    return preset


def get_preset(name: str | Preset) -> Preset:
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(PRESETS))}") from None
