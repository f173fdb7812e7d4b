"""Find, fetch, verify, cache and load X3D checkpoints into the MMAction2-named model.

Sources (``resolve_checkpoint``): a local path, ``file://``, ``http(s)://`` and ``s3://``.
Downloads follow torch.hub's cache conventions: they land in ``$X3D_CACHE`` if set, else
torch.hub's own ``<hub dir>/checkpoints`` (``$TORCH_HOME/hub``, default ``~/.cache/torch/hub``), under
the URL's file name, and are checked against the sha256 prefix in OpenMMLab-style file names
(``name-<8 hex>.pth``), as ``torch.hub.load_state_dict_from_url(check_hash=True)`` does.
HTTP goes through ``torch.hub.download_url_to_file``, S3 through ``x3d.storage`` (where every
S3 access is made); both land in the cache atomically. Renaming the keys of each published layout is
``x3d.checkpoint_filters``' job.

Every failure raises ``CheckpointError`` with a one-line message meant for the user.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from . import checkpoint_filters, storage
from .checkpoint_filters import (
    LAYOUTS,
    CheckpointError,
    strip_module_prefix,
    detect_layout,
    from_mmaction2,
    from_pyslowfast,
    from_pytorchvideo,
    load_state_dict_strict,
    unpack_checkpoint,
)
from .model import X3D, build_model
from .presets import Preset, get_preset

__all__ = [
    *checkpoint_filters.__all__,
    "CheckpointInfo",
    "read_checkpoint",
    "resolve_checkpoint",
    "cache_dir",
    "file_sha256",
    "load_checkpoint_into",
    "load_model",
    "save_mmaction2_checkpoint",
]

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
    """Download cache: ``override``, else ``$X3D_CACHE``, else torch.hub's ``<hub dir>/checkpoints``."""
    if override or os.environ.get("X3D_CACHE"):
        return Path(override or os.environ["X3D_CACHE"]).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints"


@dataclass(frozen=True)
class _Resolved:
    path: Path
    trusted: bool  # user's own local file, or a download whose hash matched its pinned prefix
    sha256: str | None = None  # already computed while verifying


def _no_internet_hint(source: str, reason: str, file_name: str) -> CheckpointError:
    return CheckpointError(
        f"could not download {source} ({reason}). This machine may have no internet: download the "
        f"file elsewhere and pass it with --checkpoint /path/to/file.pth "
        f"(or set X3D_CACHE to a folder holding {file_name})"
    )


def _hash_matches(path: Path, expected: str | None) -> tuple[bool, str | None]:
    if not expected:
        return True, None
    got = file_sha256(path)
    return got.startswith(expected.lower()), got


def _download_into_cache(source: str, file_name: str, expected: str | None, cache: Path) -> _Resolved:
    """Cache hit without network, else fetch into a temp file in the cache, verify, rename."""
    target = cache / file_name
    if target.is_file():
        ok, got = _hash_matches(target, expected)
        if ok:
            return _Resolved(target, trusted=bool(expected), sha256=got)
        target.unlink(missing_ok=True)  # stale or damaged: fetch again
    with storage.atomic_local_file(target) as tmp:
        _fetch(source, Path(tmp), file_name)
        ok, got = _hash_matches(Path(tmp), expected)
        if not ok:
            raise CheckpointError(
                f"sha256 mismatch for {source}: expected {expected}..., got {got[:len(expected)]}... "
                "(file deleted; download again, or check the URL)"
            )
    return _Resolved(target, trusted=bool(expected), sha256=got)


def _fetch(source: str, dest: Path, file_name: str) -> None:
    """Bytes of an http(s):// or s3:// checkpoint into ``dest``; every failure one line."""
    if storage.is_remote(source):
        try:
            data = storage.read_bytes(source)
        except storage.StorageError as exc:
            reason = str(exc).removeprefix(f"{source}: ")
            if reason in ("no such key", "bucket does not exist"):
                raise CheckpointError(f"S3 object not found: {source}") from None
            raise CheckpointError(f"could not download {source} ({reason})") from None
        dest.write_bytes(data)
        return
    try:
        torch.hub.download_url_to_file(source, str(dest), progress=sys.stderr.isatty())
    except urllib.error.HTTPError as exc:
        raise CheckpointError(f"HTTP {exc.code} for {source}") from None
    except urllib.error.URLError as exc:
        raise _no_internet_hint(source, str(exc.reason), file_name) from None
    except (OSError, TimeoutError) as exc:  # reset, timeout, short read mid-transfer
        raise _no_internet_hint(source, str(exc) or type(exc).__name__, file_name) from None


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
    if scheme == "s3" and (not parts.netloc or not parts.path.strip("/")):
        raise CheckpointError(f"bad S3 URI {text}: expected s3://bucket/key")
    if scheme not in ("http", "https", "s3"):
        raise CheckpointError(f"unsupported checkpoint source {text} (use a path, file://, http(s):// or s3://)")
    expected = sha256_prefix or sha256_prefix_from_name(file_name)
    return _download_into_cache(text, file_name, expected, cache_dir(cache))


def resolve_checkpoint(
    source: str | Path, cache_dir: str | Path | None = None, *, sha256_prefix: str | None = None
) -> Path:
    """A local file for ``source``: a path, ``file://``, ``http(s)://`` or ``s3://bucket/key``.

    Remote files are cached under ``cache_dir`` (default ``$X3D_CACHE``, else torch.hub's
    ``<hub dir>/checkpoints``) by file name and checked against ``sha256_prefix`` (default: the
    ``-<hex>`` suffix of the file name, as OpenMMLab names its files). A cached file that
    verifies is reused without network.
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
    state = {k: v.detach().cpu() for k, v in strip_module_prefix(state).items()}
    full_meta = {"time": time.strftime("%Y%m%d_%H%M%S"), "producer": "x3d-ray"}
    full_meta.update(meta or {})
    path = Path(path)
    with storage.atomic_local_file(path) as tmp:
        torch.save({"state_dict": state, "meta": full_meta}, tmp)
    return path
