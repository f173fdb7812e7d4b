"""MMAction2 1.2.0 as a test oracle: import it, find its packaged X3D configs, build its pieces.

The mmaction2 1.2.0 wheel ships ``mmaction/models/localizers/__init__.py`` importing
``.drn.drn.DRN`` but not the ``drn`` folder itself, so ``import mmaction.models`` (and with it
``mmaction.apis``) fails. ``import_mmaction`` puts an empty stand-in for that package into
``sys.modules`` first, only when the folder is really missing. DRN is a temporal-grounding
localizer that nothing here uses. ``mmaction.utils.dependency`` (imported by
``mmaction.models``) also needs the ``importlib_metadata`` backport, which mmaction2 does not
declare; when it is absent the standard library's ``importlib.metadata`` (same two names used:
``PackageNotFoundError``, ``distribution``) stands in for it.

Everything is imported lazily, and the tests that need MMAction2 skip when it is not installed
(``pip install -e ".[parity]"`` brings it).
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import types
from pathlib import Path

import pytest

MODEL_CONFIGS = {
    "x3d_s": "x3d_s_13x6x1_facebook-kinetics400-rgb.py",
    "x3d_m": "x3d_m_16x5x1_facebook-kinetics400-rgb.py",
}

_DRN = "mmaction.models.localizers.drn"


def _mmaction_dir() -> Path | None:
    spec = importlib.util.find_spec("mmaction")  # top-level: does not import the package
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _stub_missing_drn(package_dir: Path) -> None:
    if (package_dir / "models" / "localizers" / "drn").is_dir() or _DRN in sys.modules:
        return
    package = types.ModuleType(_DRN)
    package.__path__ = []  # a package, so ``from .drn.drn import DRN`` resolves the submodule
    module = types.ModuleType(_DRN + ".drn")

    class DRN:  # placeholder only; never built
        def __init__(self, *args, **kwargs):
            raise RuntimeError("DRN is not shipped in the mmaction2 1.2.0 wheel")

    module.DRN = DRN
    package.drn = module
    sys.modules[_DRN] = package
    sys.modules[_DRN + ".drn"] = module


def _stand_in_importlib_metadata() -> None:
    if "importlib_metadata" in sys.modules or importlib.util.find_spec("importlib_metadata") is not None:
        return
    from importlib import metadata

    sys.modules["importlib_metadata"] = metadata


def import_mmaction():
    """``mmaction`` with its models, transforms and apis importable; skips the test if absent."""
    package_dir = _mmaction_dir()
    if package_dir is None:
        pytest.skip("MMAction2 is not installed (pip install -e '.[parity]')")
    _stub_missing_drn(package_dir)
    _stand_in_importlib_metadata()
    import mmaction
    import mmaction.apis  # noqa: F401  (registers models and transforms)
    import mmaction.datasets  # noqa: F401
    import mmaction.models  # noqa: F401
    from mmengine.registry import init_default_scope

    init_default_scope("mmaction")
    return mmaction


def config_path(model: str) -> Path:
    """The X3D config as packaged inside the installed mmaction (``mmaction/.mim/configs``)."""
    mmaction = import_mmaction()
    path = Path(mmaction.__file__).parent / ".mim" / "configs" / "recognition" / "x3d" / MODEL_CONFIGS[model]
    if not path.is_file():
        pytest.skip(f"packaged MMAction2 config not found: {path}")
    return path


def load_config(model: str):
    """``mmengine.Config`` of the packaged X3D config (a fresh copy each call)."""
    from mmengine import Config

    return Config.fromfile(str(config_path(model)))


def pipeline_step(cfg, type_name: str) -> dict:
    """The one step of ``cfg.test_pipeline`` of this type, as a plain dict."""
    steps = [dict(step) for step in cfg.test_pipeline if step["type"] == type_name]
    assert len(steps) == 1, f"expected one {type_name} in the test pipeline, found {len(steps)}"
    return steps[0]


def test_pipeline_for(cfg, views: int) -> list[dict]:
    """The config's test pipeline for a view count.

    30 = the config as shipped (10 clips, ThreeCrop). 10 = ThreeCrop swapped for a CenterCrop of
    the same size (MMAction2 1.x ships no 10-view config; this is the original 0.x one). 3 and 1
    = one clip (``num_clips=1``) with ThreeCrop / CenterCrop.
    """
    pipeline = [copy.deepcopy(dict(step)) for step in cfg.test_pipeline]
    for step in pipeline:
        if step["type"] == "SampleFrames" and views in (1, 3):
            step["num_clips"] = 1
        if step["type"] == "ThreeCrop" and views in (1, 10):
            step["type"] = "CenterCrop"
    return pipeline


def build_transform(step: dict):
    """One MMAction2 transform from its config dict, through the registry."""
    import_mmaction()
    from mmaction.registry import TRANSFORMS

    return TRANSFORMS.build(copy.deepcopy(step))


def build_recognizer(cfg):
    """MMAction2's Recognizer3D for ``cfg.model``, on the CPU, in eval mode."""
    import_mmaction()
    from mmaction.registry import MODELS

    return MODELS.build(copy.deepcopy(cfg.model)).eval()


# --------------------------------------------------------------------------------------------
# Test material: frames whose global statistics differ per seed, and random X3D weights that
# turn such differences into clearly different predictions.
# --------------------------------------------------------------------------------------------


def scene_frames(num_frames: int, height: int, width: int, seed: int):
    """uint8 ``(T, H, W, 3)``: a tinted gradient, moving stripes and noise, all drawn from ``seed``.

    Colour, contrast, stripe frequency/direction/speed and noise level change with the seed, so
    two scenes differ in their global statistics (what a globally pooled network sees), not
    only in their pixels.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(20, 235, 3)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = np.cos(angle) * xx / width + np.sin(angle) * yy / height
    gradient_amp = rng.uniform(-80, 80, 3)
    direction = rng.uniform(0, np.pi)
    freq, speed = rng.uniform(0.03, 0.25), rng.uniform(-0.6, 0.6)
    stripe_amp, noise = rng.uniform(-60, 60, 3), rng.uniform(0, 30)
    along = np.cos(direction) * xx + np.sin(direction) * yy
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        wave = np.sin(2 * np.pi * freq * along - speed * t)
        img = base + gradient[..., None] * gradient_amp + wave[..., None] * stripe_amp
        img += rng.normal(0, noise, (height, width, 3))
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def randomize_weights(model, calibration, seed: int, logit_std: float = 4.0):
    """Give ``model`` (ours, in place) random weights that make a discriminative classifier.

    Convs and linears: He-normal, so activations keep their scale through the depth. BatchNorm:
    random affine parameters, small at the end of each residual branch (a deep random network
    otherwise amplifies small differences in input statistics into a few huge features); running statistics measured on ``calibration`` (normalised
    ``(N, 3, T, H, W)``, or a list of such batches of different sizes) in train mode, then perturbed, so eval-mode BN keeps the
    activations O(1) and input-dependent. Finally the last layer is centred and scaled: its bias
    cancels the hidden features' mean over the calibration clips, and its weights are scaled so
    the logits spread with about ``logit_std``. Otherwise the part of the features that every
    input shares decides the top class, and all videos get the same one. Returns the model, in
    eval mode.
    """
    import torch
    from torch import nn

    batches = list(calibration) if isinstance(calibration, (list, tuple)) else [calibration]
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm3d)]
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (nn.Conv3d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=gen)
                if module.bias is not None:
                    module.bias.normal_(0.0, 0.1, generator=gen)
            elif isinstance(module, nn.BatchNorm3d):
                # residual branches end small, so the 26 blocks stay a gentle, stable map
                low, high = (0.1, 0.3) if name.endswith("conv3.bn") else (0.5, 1.5)
                module.weight.uniform_(low, high, generator=gen)
                module.bias.normal_(0.0, 0.2, generator=gen)
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the calibration pass
        model.train()
        for batch in batches:
            model(batch)
        model.eval()
        for module in norms:
            module.momentum = 0.1
            noise = torch.randn(module.running_mean.shape, generator=gen)
            module.running_mean.add_(0.1 * noise * module.running_var.sqrt())
            module.running_var.mul_(torch.empty_like(module.running_var).uniform_(0.7, 1.4, generator=gen))
            module.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (), generator=gen)))
        head = model.cls_head
        hidden = torch.cat([torch.relu(head.fc1(head.pool(model.backbone(b)).flatten(1))) for b in batches])
        centre = hidden.mean(dim=0)
        spread = ((hidden - centre) @ head.fc2.weight.T).std()
        head.fc2.weight.mul_(logit_std / spread)
        head.fc2.bias.copy_(-(head.fc2.weight @ centre) + 0.1 * torch.randn(head.fc2.bias.shape, generator=gen))
    return model.eval()


def calibration_batch(protocol, clips: int = 6, frames: int = 8, size: int = 96, seed: int = 1000):
    """Normalised ``(clips, 3, frames, size, size)`` views for ``randomize_weights``.

    Made like the test views, only smaller: a scene 1.2-3x smaller than ``size`` (either
    orientation) resized so its short side is ``size``, then centre-cropped. The test videos are
    64-160 px, upsampled to 182 / 256, hence smooth; BN statistics measured on sharper input
    let the activations grow through the 26 blocks until one class takes all the probability.
    """
    import numpy as np
    import torch

    from x3d.protocol import normalize, resize_frames

    rng = np.random.default_rng(seed)
    views = []
    for i in range(clips):
        short = max(8, int(size / rng.uniform(1.2, 3.0)) // 2 * 2)
        long = int(short * rng.uniform(1.0, 1.8)) // 2 * 2
        height, width = (short, long) if i % 2 == 0 else (long, short)
        scene = resize_frames(scene_frames(frames, height, width, seed + i), size)
        y0, x0 = (scene.shape[1] - size) // 2, (scene.shape[2] - size) // 2
        views.append(scene[:, y0 : y0 + size, x0 : x0 + size])
    return normalize(torch.from_numpy(np.stack(views)), protocol)


def one_torch_thread():
    """Run a module's forwards on one intra-op thread, then restore the setting.

    On a small machine shared with other processes, OpenMP workers that spin for busy cores
    make each operator wait: a tiny X3D forward went from 0.07 s to 9 s with two threads under
    a load of ~9 on 2 cores. One thread is never more than ~2x slower when the machine is idle.
    A generator, for test modules to wrap in an autouse fixture.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
