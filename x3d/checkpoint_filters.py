"""Checkpoint key filters: a foreign X3D state dict renamed onto this package's module names.

Three published layouts hold the same X3D weights under different names:

* ``mmaction2``    - ``{"state_dict": {...}, "meta": {...}}`` or a bare dict; keys ``backbone.*``,
                     ``cls_head.*`` (exactly our module names).
* ``pyslowfast``   - ``{"model_state": {...}, "epoch", "cfg", ...}``; keys ``s1.*`` .. ``s5.*``,
                     ``head.*`` (conv5 lives in SlowFast's head; ``lin_5`` is a 1x1x1 conv).
* ``pytorchvideo`` - ``{"model_state": {...}}``; keys ``blocks.*``.

One small pure filter per layout (``from_mmaction2``, ``from_pyslowfast``, ``from_pytorchvideo``),
in the manner of timm's ``checkpoint_filter_fn``: tensors in, renamed tensors out, no files, no
network. The renaming tables are rules (regexes), not lists, so they work for any depth. Keys
that no rule knows pass through unchanged, so the strict loader reports them instead of silently
dropping weights. Every tensor's name in each layout, from the three projects' X3D module trees,
is in tests/data/x3d-keymap.tsv, which the tests hold these rules to. Fetching, verifying and
caching files is ``x3d.checkpoints``' job.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

__all__ = [
    "CheckpointError",
    "LAYOUTS",
    "from_mmaction2",
    "from_pyslowfast",
    "from_pytorchvideo",
    "unpack_checkpoint",
    "detect_layout",
    "load_state_dict_strict",
]

StateDict = dict[str, Tensor]

BN_EPS = 1e-5  # BatchNorm3d default; MMAction2, PySlowFast and PyTorchVideo all use it for X3D


class CheckpointError(Exception):
    """A checkpoint could not be found, fetched, verified, read or fitted. One line, no traceback."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split("\n")))


# --------------------------------------------------------------------------------------------
# Layout filters: foreign state dict -> MMAction2 names. Pure functions, no model needed.
# --------------------------------------------------------------------------------------------

_Rule = tuple["re.Pattern[str]", Callable[["re.Match[str]"], str]]


def _rule(pattern: str, target: str | Callable[["re.Match[str]"], str]) -> _Rule:
    make = target if callable(target) else (lambda m, t=target: t.format(**m.groupdict()))
    return re.compile(pattern), make


def _rename(key: str, rules: list[_Rule]) -> str:
    """First matching rule rewrites the matched prefix; the rest (``weight``, ...) is kept."""
    for pattern, make in rules:
        match = pattern.match(key)
        if match:
            return make(match) + key[match.end():]
    return key  # unknown: kept, so the strict loader names it as unexpected


def _rename_all(state_dict: Mapping[str, Tensor], rules: list[_Rule]) -> StateDict:
    out: StateDict = {}
    for key, value in state_dict.items():
        new = _rename(key, rules)
        if new in out:
            raise CheckpointError(f"two checkpoint keys map onto {new} (the second is {key})")
        out[new] = value
    return out


def _linear_from_conv(state_dict: StateDict, key: str) -> StateDict:
    """A 1x1x1 Conv3d weight [out, in, 1, 1, 1] used as a Linear -> [out, in]."""
    weight = state_dict.get(key)
    if isinstance(weight, Tensor) and weight.dim() == 5 and tuple(weight.shape[2:]) == (1, 1, 1):
        state_dict[key] = weight.reshape(weight.shape[0], weight.shape[1])
    return state_dict


def strip_module_prefix(state_dict: Mapping[str, Tensor], prefix: str = "module.") -> StateDict:
    """Drop a leading DataParallel/DistributedDataParallel ``module.`` from every key that has it."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def from_mmaction2(state_dict: Mapping[str, Tensor]) -> StateDict:
    """MMAction2 keys are ours already (``backbone.*``, ``cls_head.*``); only ``module.`` goes."""
    return strip_module_prefix(state_dict)


_CONV_ABC = {"a": "1", "b": "2", "c": "3"}
_SF_BLOCK = r"^s(?P<s>\d+)\.pathway0_res(?P<i>\d+)\."


def _sf_layer(m: "re.Match[str]") -> str:
    # PySlowFast's s1 is the stem, so its stage s{k} is MMAction2's layer{k-1}.
    return f"backbone.layer{int(m['s']) - 1}.{m['i']}."


_PYSLOWFAST_RULES: list[_Rule] = [
    _rule(r"^s1\.pathway0_stem\.conv_xy\.", "backbone.conv1_s.conv."),  # 1x3x3 spatial
    _rule(r"^s1\.pathway0_stem\.conv\.", "backbone.conv1_t.conv."),  # 5x1x1 depthwise temporal
    _rule(r"^s1\.pathway0_stem\.bn\.", "backbone.conv1_t.bn."),
    _rule(_SF_BLOCK + r"branch1\.", lambda m: _sf_layer(m) + "downsample.conv."),
    _rule(_SF_BLOCK + r"branch1_bn\.", lambda m: _sf_layer(m) + "downsample.bn."),
    _rule(_SF_BLOCK + r"branch2\.(?P<x>[abc])\.", lambda m: _sf_layer(m) + f"conv{_CONV_ABC[m['x']]}.conv."),
    _rule(_SF_BLOCK + r"branch2\.(?P<x>[abc])_bn\.", lambda m: _sf_layer(m) + f"conv{_CONV_ABC[m['x']]}.bn."),
    _rule(_SF_BLOCK + r"branch2\.se\.(?P<fc>fc[12])\.", lambda m: _sf_layer(m) + f"se_module.{m['fc']}."),
    _rule(r"^head\.conv_5\.", "backbone.conv5.conv."),  # SlowFast keeps conv5 in its head
    _rule(r"^head\.conv_5_bn\.", "backbone.conv5.bn."),
    _rule(r"^head\.lin_5\.", "cls_head.fc1."),
    _rule(r"^head\.projection\.", "cls_head.fc2."),
]


def from_pyslowfast(state_dict: Mapping[str, Tensor]) -> StateDict:
    """PySlowFast ``model_state`` -> MMAction2 names; ``head.lin_5`` (1x1x1 conv) becomes fc1.

    The weights are the same network's, but SlowFast's head pools with a fixed kernel and
    averages softmax over the remaining positions; loaded here, the MMAction2 head is used.
    """
    out = _rename_all(strip_module_prefix(state_dict), _PYSLOWFAST_RULES)
    return _linear_from_conv(out, "cls_head.fc1.weight")


_PTV_BLOCK = r"^blocks\.(?P<s>\d+)\.res_blocks\.(?P<i>\d+)\."


def _ptv_layer(m: "re.Match[str]") -> str:
    return f"backbone.layer{m['s']}.{m['i']}."  # blocks.0 is the stem, blocks.k is layer{k}


_PYTORCHVIDEO_RULES: list[_Rule] = [
    # PTV swaps the names: ``conv_t`` holds the *spatial* 1x3x3 conv, ``conv_xy`` the temporal one.
    _rule(r"^blocks\.0\.conv\.conv_t\.", "backbone.conv1_s.conv."),
    _rule(r"^blocks\.0\.conv\.conv_xy\.", "backbone.conv1_t.conv."),
    _rule(r"^blocks\.0\.norm\.", "backbone.conv1_t.bn."),
    _rule(_PTV_BLOCK + r"branch1_conv\.", lambda m: _ptv_layer(m) + "downsample.conv."),
    _rule(_PTV_BLOCK + r"branch1_norm\.", lambda m: _ptv_layer(m) + "downsample.bn."),
    _rule(_PTV_BLOCK + r"branch2\.conv_(?P<x>[abc])\.", lambda m: _ptv_layer(m) + f"conv{_CONV_ABC[m['x']]}.conv."),
    _rule(_PTV_BLOCK + r"branch2\.norm_(?P<x>[ac])\.", lambda m: _ptv_layer(m) + f"conv{_CONV_ABC[m['x']]}.bn."),
    _rule(_PTV_BLOCK + r"branch2\.norm_b\.0\.", lambda m: _ptv_layer(m) + "conv2.bn."),
    # fvcore SqueezeExcitation: block = Sequential(conv, ReLU, conv, Sigmoid)
    _rule(_PTV_BLOCK + r"branch2\.norm_b\.1\.block\.0\.", lambda m: _ptv_layer(m) + "se_module.fc1."),
    _rule(_PTV_BLOCK + r"branch2\.norm_b\.1\.block\.2\.", lambda m: _ptv_layer(m) + "se_module.fc2."),
    _rule(r"^blocks\.\d+\.pool\.pre_conv\.", "backbone.conv5.conv."),
    _rule(r"^blocks\.\d+\.pool\.pre_norm\.", "backbone.conv5.bn."),
    _rule(r"^blocks\.\d+\.pool\.post_conv\.", "cls_head.fc1."),
    _rule(r"^blocks\.\d+\.proj\.", "cls_head.fc2."),
]

_DOWNSAMPLE_CONV = re.compile(r"^(?P<block>backbone\.layer\d+\.\d+\.downsample)\.conv\.weight$")


def _identity_bn(channels: int, dtype: torch.dtype, prefix: str) -> StateDict:
    """BN that returns its input bit-exactly in float32: (x - 0) / sqrt((1 - eps) + eps) * 1 + 0."""
    return {
        f"{prefix}.weight": torch.ones(channels, dtype=dtype),
        f"{prefix}.bias": torch.zeros(channels, dtype=dtype),
        f"{prefix}.running_mean": torch.zeros(channels, dtype=dtype),
        f"{prefix}.running_var": torch.full((channels,), 1.0 - BN_EPS, dtype=dtype),
        f"{prefix}.num_batches_tracked": torch.tensor(0, dtype=torch.long),
    }


def from_pytorchvideo(state_dict: Mapping[str, Tensor]) -> StateDict:
    """PyTorchVideo hub ``model_state`` -> MMAction2 names.

    PTV builds no BN on a shortcut whose width does not change (layer1.0: 24 -> 24, stride 2),
    where MMAction2 and PySlowFast have one. That BN is filled with an identity (weight 1,
    bias 0, mean 0, var 1 - eps), so the network computes what PTV's does.
    The head does NOT: PTV pools with a fixed (T, 5, 5) / (T, 7, 7) kernel and averages logits
    over the remaining positions, while MMAction2's head pools globally. PTV hub weights were
    also trained separately, so their scores are not MMAction2's published numbers.
    """
    out = _rename_all(strip_module_prefix(state_dict), _PYTORCHVIDEO_RULES)
    for key in list(out):
        match = _DOWNSAMPLE_CONV.match(key)
        if match and f"{match['block']}.bn.weight" not in out:
            weight = out[key]
            out.update(_identity_bn(weight.shape[0], weight.dtype, f"{match['block']}.bn"))
    return _linear_from_conv(out, "cls_head.fc1.weight")


LAYOUTS: dict[str, Callable[[Mapping[str, Tensor]], StateDict]] = {
    "mmaction2": from_mmaction2,
    "pyslowfast": from_pyslowfast,
    "pytorchvideo": from_pytorchvideo,
}


# --------------------------------------------------------------------------------------------
# What is inside a loaded file: container -> state dict, and which layout its keys are in.
# --------------------------------------------------------------------------------------------

_KEY_LAYOUTS = (
    ("mmaction2", re.compile(r"^(backbone|cls_head)\.")),
    ("pyslowfast", re.compile(r"^(s\d+|head)\.")),
    ("pytorchvideo", re.compile(r"^blocks\.")),
)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def _layout_from_keys(keys: list[str]) -> str | None:
    votes = {name: sum(1 for k in keys if pattern.match(k)) for name, pattern in _KEY_LAYOUTS}
    best = max(votes, key=votes.__getitem__)
    return best if votes[best] else None


def _short(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (", ..." if len(items) > limit else "")


def unpack_checkpoint(obj: Any, layout: str | None = None) -> tuple[StateDict, str]:
    """Top-level object of a checkpoint file -> (state dict without ``module.``, layout).

    ``{"state_dict": ..., "meta": ...}`` is MMAction2/mmengine's container, ``{"model_state": ...}``
    PySlowFast's and PyTorchVideo's; anything whose values are all tensors is a bare state dict.
    The layout is decided by the key prefixes (``backbone.``/``cls_head.`` vs ``s1.``/``head.``
    vs ``blocks.``) unless ``layout`` names it.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a dict of tensors")
    container_hint = None
    if isinstance(obj.get("state_dict"), Mapping):
        state, container_hint = obj["state_dict"], "mmaction2"
    elif isinstance(obj.get("model_state"), Mapping):
        state = obj["model_state"]
    elif _is_state_dict(obj):
        state = obj
    else:
        raise CheckpointError(
            f"no weights found in checkpoint: top-level keys are ({_short([str(k) for k in obj], 6)}), "
            "expected 'state_dict', 'model_state' or a bare state dict"
        )
    state = strip_module_prefix({str(k): v for k, v in state.items()})
    if layout is None:
        layout = _layout_from_keys(list(state)) or container_hint
        if layout is None:
            raise CheckpointError(
                f"cannot tell the checkpoint layout from its keys ({_short(list(state))}); "
                f"pass layout= one of {', '.join(LAYOUTS)}"
            )
    elif layout not in LAYOUTS:
        raise CheckpointError(f"unknown checkpoint layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    return state, layout


def detect_layout(obj: Any) -> str:
    """The layout ``unpack_checkpoint`` would guess for this top-level object."""
    return unpack_checkpoint(obj)[1]


# --------------------------------------------------------------------------------------------
# Strict loading
# --------------------------------------------------------------------------------------------


def _shape(t: Tensor) -> str:
    return str(list(t.shape))


def load_state_dict_strict(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    layout: str,
    *,
    model_name: str | None = None,
    guessed: bool = True,
) -> None:
    """Load MMAction2-named tensors into ``model``; anything missing, extra or misshapen is an error.

    Missing ``num_batches_tracked`` buffers (older checkpoints, PyTorchVideo) are filled with 0,
    which is what MMAction2's non-strict loader leaves in place; they play no role at eval time.
    """
    name = model_name or getattr(getattr(model, "preset", None), "name", None) or type(model).__name__
    where = f"checkpoint does not fit {name} (layout {'guessed: ' if guessed else ''}{layout})"
    ours = model.state_dict()
    theirs = dict(state_dict)
    for key, buf in ours.items():
        if key.endswith(".num_batches_tracked") and key not in theirs:
            theirs[key] = torch.zeros_like(buf)

    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key{'s' if len(missing) != 1 else ''} ({_short(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_short(unexpected)})")
        raise CheckpointError(f"{where}: {', '.join(parts)}")

    not_tensors = [k for k in ours if not isinstance(theirs[k], Tensor)]
    if not_tensors:
        raise CheckpointError(f"{where}: not a tensor: {_short(not_tensors)}")
    wrong = [k for k in ours if tuple(theirs[k].shape) != tuple(ours[k].shape)]
    if wrong:
        k = wrong[0]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise CheckpointError(
            f"{where}: wrong shape for {k}: checkpoint {_shape(theirs[k])}, model {_shape(ours[k])}{more}"
        )
    model.load_state_dict(theirs, strict=True)
