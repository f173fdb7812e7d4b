"""Find, fetch, verify and load X3D checkpoints into the MMAction2-named model.

Three published layouts hold the same X3D weights under different names:

* ``mmaction2``    - ``{"state_dict": {...}, "meta": {...}}`` or a bare dict; keys ``backbone.*``,
                     ``cls_head.*`` (exactly our module names).
* ``pyslowfast``   - ``{"model_state": {...}, "epoch", "cfg", ...}``; keys ``s1.*`` .. ``s5.*``,
                     ``head.*`` (conv5 lives in SlowFast's head; ``lin_5`` is a 1x1x1 conv).
* ``pytorchvideo`` - ``{"model_state": {...}}``; keys ``blocks.*``.

One small pure filter per layout (``from_mmaction2``, ``from_pyslowfast``, ``from_pytorchvideo``)
renames a state dict into our names. The renaming tables are rules (regexes), not lists, so they
work for any depth. Keys that no rule knows pass through unchanged, so the strict loader reports
them instead of silently dropping weights. See ../shared/reference/x3d-protocol.md section 2.

Sources (``resolve_checkpoint``): a local path, ``file://``, ``http(s)://`` and ``s3://``.
Downloads land in one cache (``$X3D_CACHE``, default ``~/.cache/x3d``), atomically, and are
checked against the sha256 prefix in OpenMMLab-style file names (``name-<8 hex>.pth``).

Every failure raises ``CheckpointError`` with a one-line message meant for the user.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from .model import X3D, build_model
from .presets import Preset, get_preset

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "LAYOUTS",
    "from_mmaction2",
    "from_pyslowfast",
    "from_pytorchvideo",
    "unpack_checkpoint",
    "detect_layout",
    "read_checkpoint",
    "load_state_dict_strict",
    "resolve_checkpoint",
    "cache_dir",
    "file_sha256",
    "load_checkpoint_into",
    "load_model",
    "save_mmaction2_checkpoint",
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


def _strip_prefix(state_dict: Mapping[str, Tensor], prefix: str = "module.") -> StateDict:
    """Drop a leading DataParallel/DistributedDataParallel ``module.`` from every key that has it."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def from_mmaction2(state_dict: Mapping[str, Tensor]) -> StateDict:
    """MMAction2 keys are ours already (``backbone.*``, ``cls_head.*``); only ``module.`` goes."""
    return _strip_prefix(state_dict)


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
    out = _rename_all(_strip_prefix(state_dict), _PYSLOWFAST_RULES)
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
    out = _rename_all(_strip_prefix(state_dict), _PYTORCHVIDEO_RULES)
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
    state = _strip_prefix({str(k): v for k, v in state.items()})
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
    name = model_name or getattr(model, "preset_name", None) or type(model).__name__
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


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def read_checkpoint(path: str | Path, *, trusted: bool) -> Any:
    """``torch.load`` a file on the CPU, tensors-only first.

    PySlowFast files also pickle their ``cfg`` (a yacs CfgNode), which the tensors-only
    unpickler refuses. Full unpickling can run arbitrary code, so it is only attempted when
    ``trusted``: the file is a local path the user passed, or a download whose sha256 matched
    the hash pinned in its name. Unverified downloads never get that far.
    """
    path = Path(path)
    unreadable = f"{path}: not a readable checkpoint (truncated or corrupt?)"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The tensors-only unpickler names the class it refused ("Unsupported global: GLOBAL
        # yacs.config.CfgNode ..."); anything else means the bytes themselves are bad.
        if "global" not in str(exc).lower():
            raise CheckpointError(unreadable) from None
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception:
        raise CheckpointError(unreadable) from None

    if not trusted:
        raise CheckpointError(
            f"{path}: holds pickled Python objects besides tensors (e.g. a PySlowFast cfg) and its "
            "hash is not pinned, so it is not unpickled; download it yourself and pass it with "
            "--checkpoint /path/to/file"
        )
    try:
        # Safe by the rule above: a user-supplied local file or a hash-verified download.
        return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as exc:
        raise CheckpointError(
            f"{path}: unpickling needs the Python module {exc.name!r} (pip install {exc.name})"
        ) from None
    except Exception:
        raise CheckpointError(unreadable) from None


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Sources: local path, file://, http(s)://, s3://  ->  a local file
# --------------------------------------------------------------------------------------------

_HASH_IN_NAME = re.compile(r"-(?P<sha>[0-9a-f]{8,64})\.[A-Za-z0-9]+$")


def sha256_prefix_from_name(file_name: str) -> str | None:
    """OpenMMLab / torch.hub convention: ``name-<first 8+ hex of sha256>.pth``."""
    match = _HASH_IN_NAME.search(file_name)
    return match["sha"] if match else None


def cache_dir(override: str | Path | None = None) -> Path:
    """Download cache: ``override``, else ``$X3D_CACHE``, else ``~/.cache/x3d``."""
    chosen = override or os.environ.get("X3D_CACHE") or Path.home() / ".cache" / "x3d"
    return Path(chosen).expanduser()


@dataclass(frozen=True)
class _Resolved:
    path: Path
    trusted: bool  # user's own local file, or a download whose hash matched its pinned prefix
    sha256: str | None = None  # already computed while verifying


class _Progress:
    """``\\r name  12.3 / 30.5 MB`` on stderr, only on a terminal and only for big files."""

    def __init__(self, name: str, total: int | None, min_size: int = 4 << 20):
        self.name, self.total, self.done, self._last = name, total, 0, 0.0
        self.enabled = sys.stderr.isatty() and (total is None or total >= min_size)

    def __call__(self, nbytes: int) -> None:
        self.done += nbytes
        now = time.monotonic()
        if self.enabled and now - self._last > 0.2:
            self._last = now
            total = f" / {self.total / 1e6:.1f}" if self.total else ""
            sys.stderr.write(f"\rdownloading {self.name}  {self.done / 1e6:.1f}{total} MB")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _no_internet_hint(source: str, reason: str, file_name: str) -> CheckpointError:
    return CheckpointError(
        f"could not download {source} ({reason}). This machine may have no internet: download the "
        f"file elsewhere and pass it with --checkpoint /path/to/file.pth "
        f"(or set X3D_CACHE to a folder holding {file_name})"
    )


def _verified(path: Path, expected: str | None, source: str) -> _Resolved:
    """Check a freshly downloaded temp file; a mismatch deletes it."""
    if not expected:
        return _Resolved(path, trusted=False)
    got = file_sha256(path)
    if not got.startswith(expected.lower()):
        path.unlink(missing_ok=True)
        raise CheckpointError(
            f"sha256 mismatch for {source}: expected {expected}..., got {got[:len(expected)]}... "
            "(file deleted; download again, or check the URL)"
        )
    return _Resolved(path, trusted=True, sha256=got)


def _cached(target: Path, expected: str | None) -> _Resolved | None:
    """A file already in the cache, if usable: it must verify when a hash is pinned."""
    if not target.is_file():
        return None
    if not expected:
        return _Resolved(target, trusted=False)
    got = file_sha256(target)
    if got.startswith(expected.lower()):
        return _Resolved(target, trusted=True, sha256=got)
    target.unlink(missing_ok=True)  # stale or damaged: fetch again
    return None


def _download_into_cache(
    source: str, file_name: str, expected: str | None, cache: Path, fetch: Callable[[Path], None]
) -> _Resolved:
    """Cache hit without network, else ``fetch`` into a temp file in the cache, verify, rename."""
    target = cache / file_name
    hit = _cached(target, expected)
    if hit:
        return hit
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{file_name}.", suffix=".part", dir=cache)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        fetch(tmp)
        resolved = _verified(tmp, expected, source)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return _Resolved(target, resolved.trusted, resolved.sha256)


def _fetch_http(url: str, file_name: str) -> Callable[[Path], None]:
    def fetch(dest: Path) -> None:
        request = urllib.request.Request(url, headers={"User-Agent": "x3d-ray"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response, open(dest, "wb") as out:
                length = response.headers.get("Content-Length")
                progress = _Progress(file_name, int(length) if length and length.isdigit() else None)
                try:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        progress(len(chunk))
                finally:
                    progress.close()
        except urllib.error.HTTPError as exc:
            raise CheckpointError(f"HTTP {exc.code} for {url}") from None
        except urllib.error.URLError as exc:
            raise _no_internet_hint(url, str(exc.reason), file_name) from None
        except (OSError, TimeoutError) as exc:  # reset, timeout, short read mid-transfer
            raise _no_internet_hint(url, str(exc) or type(exc).__name__, file_name) from None

    return fetch


def _fetch_s3(uri: str, bucket: str, key: str, file_name: str) -> Callable[[Path], None]:
    def fetch(dest: Path) -> None:
        try:
            import boto3  # lazy: only s3:// sources need it
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
        except ImportError:
            raise CheckpointError(f"reading {uri} needs boto3 (pip install boto3)") from None
        # Standard AWS configuration: env vars (incl. AWS_ENDPOINT_URL), profiles, instance roles.
        client = boto3.client("s3", config=Config(retries={"mode": "adaptive"}))
        progress = _Progress(file_name, None)
        try:
            client.download_file(bucket, key, str(dest), Callback=progress)
        except NoCredentialsError:
            raise CheckpointError(f"no AWS credentials to read {uri}") from None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "?"))
            if code in ("404", "NoSuchKey", "NoSuchBucket"):
                raise CheckpointError(f"S3 object not found: {uri}") from None
            raise CheckpointError(f"could not download {uri} (S3 error {code})") from None
        except BotoCoreError as exc:
            raise _no_internet_hint(uri, str(exc), file_name) from None
        finally:
            progress.close()

    return fetch


def _resolve(source: str | Path, cache: str | Path | None = None, sha256_prefix: str | None = None) -> _Resolved:
    text = str(source)
    scheme = urllib.parse.urlsplit(text).scheme.lower() if "://" in text else ""
    if scheme in ("", "file"):
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(text).path)) if scheme else Path(text)
        path = path.expanduser()
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        return _Resolved(path, trusted=True)  # the user named this file themselves

    parts = urllib.parse.urlsplit(text)
    file_name = Path(urllib.parse.unquote(parts.path)).name
    if not file_name:
        raise CheckpointError(f"{text} does not name a file")
    expected = sha256_prefix or sha256_prefix_from_name(file_name)
    if scheme in ("http", "https"):
        fetch = _fetch_http(text, file_name)
    elif scheme == "s3":
        if not parts.netloc or not parts.path.strip("/"):
            raise CheckpointError(f"bad S3 URI {text}: expected s3://bucket/key")
        fetch = _fetch_s3(text, parts.netloc, parts.path.lstrip("/"), file_name)
    else:
        raise CheckpointError(f"unsupported checkpoint source {text} (use a path, file://, http(s):// or s3://)")
    return _download_into_cache(text, file_name, expected, cache_dir(cache), fetch)


def resolve_checkpoint(
    source: str | Path, cache_dir: str | Path | None = None, *, sha256_prefix: str | None = None
) -> Path:
    """A local file for ``source``: a path, ``file://``, ``http(s)://`` or ``s3://bucket/key``.

    Remote files are cached under ``cache_dir`` (default ``$X3D_CACHE`` or ``~/.cache/x3d``) by
    file name and checked against ``sha256_prefix`` (default: the ``-<hex>`` suffix of the file
    name, as OpenMMLab names its files). A cached file that verifies is reused without network.
    """
    return _resolve(source, cache_dir, sha256_prefix).path


# --------------------------------------------------------------------------------------------
# Putting it together
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    layout: str
    sha256: str


def load_checkpoint_into(
    model: nn.Module,
    source: str | Path,
    layout: str | None = None,
    *,
    cache_dir: str | Path | None = None,
    sha256_prefix: str | None = None,
    model_name: str | None = None,
) -> CheckpointInfo:
    """Resolve ``source``, read it, rename it from its layout and load it strictly into ``model``."""
    resolved = _resolve(source, cache_dir, sha256_prefix)
    obj = read_checkpoint(resolved.path, trusted=resolved.trusted)
    state, found_layout = unpack_checkpoint(obj, layout)
    mm_state = LAYOUTS[found_layout](state)
    load_state_dict_strict(model, mm_state, found_layout, model_name=model_name, guessed=layout is None)
    sha = resolved.sha256 or file_sha256(resolved.path)
    return CheckpointInfo(path=resolved.path, layout=found_layout, sha256=sha)


def load_model(
    name: str | Preset = "x3d_s",
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    layout: str | None = None,
) -> X3D:
    """``build_model(name)`` with weights from ``checkpoint`` (default: the preset's), in eval mode.

    The model carries ``checkpoint_path``, ``checkpoint_sha256`` and ``checkpoint_layout`` (str)
    for the job summary.
    """
    preset = get_preset(name)
    model = build_model(preset)
    pinned = None
    if checkpoint is None:
        weights = preset.default_weights
        if weights is None:
            raise CheckpointError(f"preset {preset.name} has no default weights; pass --checkpoint")
        checkpoint, pinned = weights.url, weights.sha256_prefix
    info = load_checkpoint_into(model, checkpoint, layout, sha256_prefix=pinned, model_name=preset.name)
    model = model.to(device).eval()
    model.checkpoint_path = str(info.path)
    model.checkpoint_sha256 = info.sha256
    model.checkpoint_layout = info.layout
    return model


def save_mmaction2_checkpoint(
    model_or_state_dict: nn.Module | Mapping[str, Tensor], path: str | Path, meta: Mapping[str, Any] | None = None
) -> Path:
    """Write ``{"state_dict": ..., "meta": {...}}`` as mmengine's ``save_checkpoint`` does.

    Tensors are detached and moved to the CPU; keep ``meta`` to plain values (str, numbers, lists,
    dicts) so the file stays loadable with ``weights_only=True``. The write is atomic.
    """
    if isinstance(model_or_state_dict, nn.Module):
        state = model_or_state_dict.state_dict()
    else:
        state = model_or_state_dict
    state = {k: v.detach().cpu() for k, v in _strip_prefix(state).items()}
    full_meta = {"time": time.strftime("%Y%m%d_%H%M%S"), "producer": "x3d-ray"}
    full_meta.update(meta or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"state_dict": state, "meta": full_meta}, tmp_name)
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return path
