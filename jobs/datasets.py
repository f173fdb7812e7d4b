"""Which videos a job runs on: a small registry of datasets and the annotation formats they use.

A dataset is a name for four facts: where the videos are (`data_root`), which of them to
use and with what labels (`ann_file`, in one of the formats below), how label indices map
to class names (`label_map`) and which model to score them with by default. The registry
lives in `jobs/datasets.toml` so that `--dataset k400_val` reproduces MMAction2's setup
with no other flag; a user TOML (`--datasets`) adds entries or replaces ours, and
the `--data-root`/`--ann-file`/`--label-map`/`--ann-format` flags override any entry or,
with no dataset named, describe an unregistered one.

Annotation formats (protocol section 4.2); each has one small parser over text lines:

| `ann_format`    | line                                  | notes                                    |
|-----------------|---------------------------------------|------------------------------------------|
| `video_list`    | `rel/path.mp4 label`                  | MMAction2 VideoDataset; 1 field = no label |
| `rawframe_list` | `frame_dir total_frames label`        | MMAction2 RawframeDataset; frames `img_00001.jpg`, 1-based; 2 fields = no label |
| `slowfast_csv`  | `path label` / `path fn label` / `path` | PySlowFast; `separator` sets the delimiter |
| `path_list`     | `path-or-uri`                         | one video per line, no labels            |
| `prefix`        | (no annotation file)                  | every video file under `data_root`, local or `s3://` |

`auto` (the default) picks one from the first line. A label of -1 means "no label", as in
MMAction2's inference lists. Relative paths in the annotation are joined to `data_root`;
absolute paths and URIs are used as written. Every path may be local or on S3.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from worker.items import VideoItem
from x3d import sample_data, storage

__all__ = [
    "FORMATS",
    "LABEL_MAPS",
    "VIDEO_EXTENSIONS",
    "DatasetError",
    "DatasetSpec",
    "VideoItem",
    "check_dataset",
    "detect_format",
    "generate_dataset",
    "iter_items",
    "load_registry",
    "parse_path_list",
    "parse_rawframe_list",
    "parse_slowfast_csv",
    "parse_video_list",
    "read_label_map",
    "resolve_dataset",
]

REGISTRY_FILE = Path(__file__).with_name("datasets.toml")
REGISTRY_NAME = "jobs/datasets.toml"  # how messages refer to it, wherever the package is installed

# Label maps known by name. Path relative to this file so it works both from a checkout
# and from site-packages, without importing the x3d package (and torch with it).
_X3D_DATA = Path(__file__).resolve().parent.parent / "x3d" / "data"
LABEL_MAPS: dict[str, str] = {
    "k400": str(_X3D_DATA / "kinetics400_labels.txt"),
    "sample": str(_X3D_DATA / "sample_labels.txt"),
}

# Datasets this package can make itself (`generator = "..."` in a registry entry): the
# synthetic motion videos of x3d.sample_data, generated into the cache on first use, so the
# README's main command runs on a machine that has no data at all.
GENERATORS = {"sample:val": ("val", False), "sample:val-shuffled": ("val", True)}

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".flv")
FORMATS = ("video_list", "rawframe_list", "slowfast_csv", "path_list", "prefix")

_ENTRY_KEYS = ("data_root", "ann_file", "ann_format", "separator", "label_map", "model", "description", "generator", "published")
_FLAGS = {
    "data_root": "--data-root",
    "ann_file": "--ann-file",
    "label_map": "--label-map",
    "ann_format": "--ann-format",
    "separator": "--separator",
}
#: said after a line that splits into too many fields when no separator is set
SPACES_HINT = "a path with spaces? set the field separator with --separator (e.g. --separator tab)"


class DatasetError(Exception):
    """A dataset cannot be used; the message is one line saying what is wrong and where to fix it."""


@dataclass(frozen=True)
class DatasetSpec:
    """Everything needed to enumerate a dataset's videos. Paths may be local or s3://."""

    name: str
    data_root: str | None = None
    ann_file: str | None = None
    ann_format: str = "auto"
    label_map: str | None = None
    model: str | None = None
    separator: str | None = None  # None: any run of whitespace
    description: str = ""
    source: str | None = None  # registry file defining the entry; None when built from flags
    generator: str | None = None  # one of GENERATORS: the files are made on first use
    # Which published results (x3d.PublishedResult.dataset) were measured on these videos, so
    # the summary sets them beside this run; None (any unregistered or custom set): none apply.
    published: str | None = None


class AnnLine(NamedTuple):
    """One parsed annotation line, before paths are resolved and labels checked."""

    lineno: int
    path: str
    label: int | None
    num_frames: int | None = None


# --------------------------------------------------------------------------- registry


def _read_text(uri: str, what: str) -> str:
    try:
        return storage.read_bytes(uri).decode("utf-8-sig")
    except storage.StorageError as err:
        raise DatasetError(f"{what} {err}") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{what} {uri}: not UTF-8 text") from None


def _parse_registry(text: str, source: str) -> dict[str, DatasetSpec]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise DatasetError(f"{source}: invalid TOML: {err}") from None
    tables = doc.get("datasets", {})
    if not isinstance(tables, dict) or set(doc) - {"datasets"}:
        raise DatasetError(f"{source}: expected only [datasets.<name>] tables")
    specs = {}
    for name, entry in tables.items():
        if not isinstance(entry, dict):
            raise DatasetError(f"{source}: datasets.{name} must be a table")
        for key, value in entry.items():
            if key not in _ENTRY_KEYS:
                raise DatasetError(
                    f"{source}: dataset '{name}' has unknown key '{key}' (known: {', '.join(_ENTRY_KEYS)})"
                )
            if not isinstance(value, str):
                raise DatasetError(f"{source}: dataset '{name}': '{key}' must be a string")
        spec = DatasetSpec(name=name, source=source, **entry)
        _check_format(spec.ann_format, f"{source}: dataset '{name}'")
        if spec.generator is not None and spec.generator not in GENERATORS:
            raise DatasetError(
                f"{source}: dataset '{name}': unknown generator '{spec.generator}' (one of: {', '.join(GENERATORS)})"
            )
        specs[name] = spec
    return specs


def _check_format(ann_format: str, where: str) -> None:
    if ann_format not in (*FORMATS, "auto"):
        raise DatasetError(f"{where}: unknown ann_format '{ann_format}' (one of: auto, {', '.join(FORMATS)})")


def load_registry(user_file: str | None = None) -> dict[str, DatasetSpec]:
    """The shipped datasets, plus those of `user_file`; a user entry replaces ours whole."""
    registry = _parse_registry(REGISTRY_FILE.read_text(encoding="utf-8"), REGISTRY_NAME)
    if user_file:
        if not storage.exists(user_file):
            raise DatasetError(f"datasets file {user_file} not found (given with --datasets)")
        registry.update(_parse_registry(_read_text(user_file, "datasets file"), user_file))
    return registry


def resolve_dataset(
    name: str | None,
    *,
    datasets_file: str | None = None,
    data_root: str | None = None,
    ann_file: str | None = None,
    label_map: str | None = None,
    ann_format: str | None = None,
    separator: str | None = None,
) -> DatasetSpec:
    """The dataset a job was asked for: a registry entry with flags laid over it, or flags alone.

    A named entry keeps its ``published`` tag when flags point it at another copy of the same
    videos (``--dataset k400_val --data-root /mnt/k400``); a dataset of flags alone has none."""
    if name is None:
        if data_root is None and ann_file is None:
            known = ", ".join(sorted(load_registry(datasets_file)))
            raise DatasetError(f"no dataset given: name one ({known}) or pass --ann-file / --data-root")
        spec = DatasetSpec(name="custom")
    else:
        registry = load_registry(datasets_file)
        if name not in registry:
            raise DatasetError(
                f"unknown dataset '{name}'; known datasets: {', '.join(sorted(registry))} "
                "(add your own with --datasets)"
            )
        spec = registry[name]
    if spec.generator is not None:
        spec = _generated_paths(spec)
    flags = {"data_root": data_root, "ann_file": ann_file, "label_map": label_map, "ann_format": ann_format, "separator": separator}
    spec = dataclasses.replace(spec, **{k: v for k, v in flags.items() if v is not None})
    _check_format(spec.ann_format, "--ann-format")
    if spec.ann_format == "auto" and spec.ann_file is None:
        spec = dataclasses.replace(spec, ann_format="prefix")  # nothing to read: list the data root
    return spec


def _generated_paths(spec: DatasetSpec) -> DatasetSpec:
    """Where a generated dataset lives (in the x3d cache); nothing is generated yet."""
    split, shuffled = GENERATORS[spec.generator]
    root = sample_data.sample_cache_dir()
    ann_file = sample_data.list_file(root, split, shuffled)
    return dataclasses.replace(spec, data_root=str(root), ann_file=str(ann_file), ann_format="video_list")


def generate_dataset(spec: DatasetSpec, verbose: bool = True) -> None:
    """Make a generated dataset's files if they are not complete yet (a no-op for other datasets).

    Generation is deterministic and guarded by a lock and completion markers in the cache, so
    concurrent or interrupted first runs end with the same files.
    """
    if spec.generator is None:
        return
    split, shuffled = GENERATORS[spec.generator]
    splits = () if shuffled else (split,)
    sample_data.ensure_sample_dataset(splits=splits, shuffled=shuffled, workers=os.cpu_count() or 1, verbose=verbose)


def _hint(spec: DatasetSpec, key: str) -> str:
    if spec.source is None:
        return f"set it with {_FLAGS[key]}"
    return f"set it with {_FLAGS[key]}, or the '{key}' of dataset '{spec.name}' in {spec.source}"


def check_dataset(spec: DatasetSpec) -> None:
    """Fail early, in one line, if a file or folder the dataset needs is missing."""
    if spec.ann_format == "prefix":
        if not spec.data_root:
            raise DatasetError(f"dataset '{spec.name}' has no data root to list ({_hint(spec, 'data_root')})")
    elif not spec.ann_file:
        raise DatasetError(f"dataset '{spec.name}' has no annotation file ({_hint(spec, 'ann_file')})")
    elif not storage.exists(spec.ann_file):
        raise DatasetError(f"annotation file {spec.ann_file} not found ({_hint(spec, 'ann_file')})")
    if spec.data_root and not storage.exists(spec.data_root):
        raise DatasetError(f"data root {spec.data_root} not found ({_hint(spec, 'data_root')})")
    if spec.label_map and spec.label_map not in LABEL_MAPS and not storage.exists(spec.label_map):
        raise DatasetError(f"label map {spec.label_map} not found ({_hint(spec, 'label_map')})")


def read_label_map(path_or_key: str) -> list[str]:
    """Class names by index: line i (0-based) of the file names class i, as in MMAction2."""
    uri = LABEL_MAPS.get(path_or_key, path_or_key)
    lines = [line.strip() for line in _read_text(uri, "label map").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    for lineno, line in enumerate(lines, 1):
        if not line:  # would silently shift every later class index
            raise DatasetError(f"{path_or_key}:{lineno}: empty line in label map (class index = line number)")
    if not lines:
        raise DatasetError(f"label map {path_or_key} is empty")
    return lines


# --------------------------------------------------------------------------- parsers


def _spaces_hint(separator: str | None) -> str:
    """The --separator hint, when the line was split on any whitespace (a space in a path)."""
    return f"; {SPACES_HINT}" if separator is None else ""


def _fields(lines: Iterable[str], separator: str | None) -> Iterator[tuple[int, str, list[str]]]:
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if line:
            yield lineno, line, [f.strip() for f in line.split(separator)]


def _int(text: str, what: str, source: str, lineno: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise DatasetError(f"{source}:{lineno}: {what} must be an integer, got {text!r}") from None


def _label(text: str, source: str, lineno: int) -> int | None:
    label = _int(text, "label", source, lineno)
    if label == -1:  # MMAction2's "no label" for inference lists
        return None
    if label < 0:
        raise DatasetError(f"{source}:{lineno}: label {label} is negative")
    return label


def parse_video_list(lines: Iterable[str], source: str, separator: str | None = None) -> Iterator[AnnLine]:
    """MMAction2 VideoDataset list: `path label`, or `path` alone for unlabeled videos."""
    for lineno, line, fields in _fields(lines, separator):
        if len(fields) == 1:
            yield AnnLine(lineno, fields[0], None)
        elif len(fields) == 2:
            yield AnnLine(lineno, fields[0], _label(fields[1], source, lineno))
        else:
            raise DatasetError(f"{source}:{lineno}: expected 'path label', got {line!r}{_spaces_hint(separator)}")


def parse_rawframe_list(lines: Iterable[str], source: str, separator: str | None = None) -> Iterator[AnnLine]:
    """MMAction2 RawframeDataset list: `frame_dir total_frames label` (label optional)."""
    for lineno, line, fields in _fields(lines, separator):
        if len(fields) not in (2, 3):
            raise DatasetError(f"{source}:{lineno}: expected 'frame_dir total_frames label', got {line!r}{_spaces_hint(separator)}")
        total = _int(fields[1], "total_frames", source, lineno)
        if total <= 0:
            raise DatasetError(f"{source}:{lineno}: total_frames must be positive, got {total}")
        label = _label(fields[2], source, lineno) if len(fields) == 3 else None
        yield AnnLine(lineno, fields[0], label, total)


def parse_slowfast_csv(lines: Iterable[str], source: str, separator: str | None = None) -> Iterator[AnnLine]:
    """PySlowFast csv: `path label`, `path fn label` (fn unused) or `path` alone (no label)."""
    for lineno, line, fields in _fields(lines, separator):
        if len(fields) == 1:
            yield AnnLine(lineno, fields[0], None)
        elif len(fields) in (2, 3):
            yield AnnLine(lineno, fields[0], _label(fields[-1], source, lineno))
        else:
            raise DatasetError(f"{source}:{lineno}: expected 'path label' or 'path fn label', got {line!r}{_spaces_hint(separator)}")


def parse_path_list(lines: Iterable[str], source: str, separator: str | None = None) -> Iterator[AnnLine]:
    """A plain list of video paths or URIs; the whole line is the path, so spaces are kept."""
    for lineno, raw in enumerate(lines, 1):
        if raw.strip():
            yield AnnLine(lineno, raw.strip(), None)


_PARSERS: dict[str, Callable[[Iterable[str], str, str | None], Iterator[AnnLine]]] = {
    "video_list": parse_video_list,
    "rawframe_list": parse_rawframe_list,
    "slowfast_csv": parse_slowfast_csv,
    "path_list": parse_path_list,
}


def detect_format(lines: Iterable[str], source: str, separator: str | None = None) -> str:
    """Guess the format from the first non-blank line.

    A path with a file extension is a video, one without is a frame folder. That is what
    tells `path n label` from PySlowFast (`path fn label`) and MMAction2 rawframes apart.
    """
    for lineno, line, fields in _fields(lines, separator):
        numeric = all(f.lstrip("-").isdigit() for f in fields[1:])
        numeric_label = fields[-1].lstrip("-").isdigit()
        is_file = bool(os.path.splitext(fields[0])[1])
        if len(fields) == 1:
            return "path_list"
        if numeric and len(fields) == 2:
            return "video_list" if is_file else "rawframe_list"
        if len(fields) == 3 and is_file and numeric_label:
            return "slowfast_csv"
        if len(fields) == 3 and not is_file and numeric:
            return "rawframe_list"
        raise DatasetError(
            f"{source}:{lineno}: cannot tell the annotation format from {line!r}; "
            f"set ann_format ({', '.join(f for f in FORMATS if f != 'prefix')}){_spaces_hint(separator)}"
        )
    return "path_list"  # empty file: no videos whatever the format


# --------------------------------------------------------------------------- items


def _resolve(data_root: str | None, path: str) -> str:
    """Where an annotation path is read: joined to the data root and, when local and relative,
    made absolute against the directory the job started in. Ray workers may run elsewhere,
    and an error row for a missing file then names the folder it was looked for in."""
    if "://" in path or os.path.isabs(path):
        return path
    uri = storage.join(data_root, path) if data_root else path
    return uri if storage.is_remote(uri) else os.path.abspath(uri)


def iter_items(spec: DatasetSpec) -> Iterator[VideoItem]:
    """The dataset's videos in annotation order (listing order for `prefix`), read lazily."""
    if spec.ann_format == "prefix":
        yield from _iter_prefix(spec)
        return
    if not spec.ann_file:
        raise DatasetError(f"dataset '{spec.name}' has no annotation file ({_hint(spec, 'ann_file')})")
    num_classes = len(read_label_map(spec.label_map)) if spec.label_map else None
    source = spec.ann_file
    lines = _read_text(source, "annotation file").splitlines()
    ann_format = spec.ann_format
    if ann_format == "auto":
        ann_format = detect_format(lines, source, spec.separator)
    kind = "rawframes" if ann_format == "rawframe_list" else "video"
    for entry in _PARSERS[ann_format](lines, source, spec.separator):
        if entry.label is not None and num_classes is not None and entry.label >= num_classes:
            raise DatasetError(
                f"{source}:{entry.lineno}: label {entry.label} out of range "
                f"for label map '{spec.label_map}' ({num_classes} classes)"
            )
        yield VideoItem(entry.path, _resolve(spec.data_root, entry.path), entry.label, entry.num_frames, kind)


def _iter_prefix(spec: DatasetSpec) -> Iterator[VideoItem]:
    if not spec.data_root:
        raise DatasetError(f"dataset '{spec.name}' has no data root to list ({_hint(spec, 'data_root')})")
    root = spec.data_root if spec.data_root.endswith("/") else spec.data_root + "/"
    try:
        for info in storage.list_files(spec.data_root, VIDEO_EXTENSIONS):
            key = info.uri[len(root):] if info.uri.startswith(root) else os.path.basename(info.uri)
            yield VideoItem(key, info.uri, None)
    except storage.StorageError as err:
        raise DatasetError(f"data root {err}") from None
