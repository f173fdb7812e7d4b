"""The request's mistakes, found before torch and Ray are imported (they take 5-25 s to load).

Everything here reads only the flags, the file system, the dataset registry and this machine's
CPU and GPU counts: a missing ``--input``, an ``--output`` that is a file, a registered dataset
whose files are not here, or more ``--num-actors`` than the local Ray the run would start can
hold is one line within a second, not after start-up. The jobs make the same checks again
(they are callable from Python without the command line); this module is what lets the command
make them first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from cluster.errors import ClusterError
from cluster.sizing import ClusterShape, size_pipeline
from jobs import results
from jobs.datasets import DatasetError, DatasetSpec, check_dataset
from jobs.errors import JobError
from worker.cpus import cgroup_quota_cpus
from worker.spec import ModelSpec
from x3d import storage

__all__ = ["LIST_SUFFIXES", "RUN_FLAGS", "check_dataset_files", "check_label_features", "check_label_input", "check_label_resume", "check_local_fit",
           "check_output", "check_resume_target", "check_run_flags", "check_tidy_output", "flag_value", "holds_labels", "is_list_file",
           "local_gpus", "local_shape", "run_differences", "starts_local_ray"]

LIST_SUFFIXES = (".txt", ".csv", ".lst", ".list")
K400_PUBLISHED = "kinetics400-val"  # the registry's tag of the datasets that are Kinetics-400's val videos
K400_HINT = (
    "Kinetics-400 is not on this machine: put it in MMAction2's layout (see MMAction2's "
    "tools/data/kinetics/README.md), point --data-root/--ann-file at it, or run "
    "`python submit.py --dataset sample`, which works now"
)


def check_output(output: str | None) -> None:
    """A local ``--output`` that is a file, or one this process cannot create, is a mistake."""
    if output is None:
        return
    results.check_output_folder(output)
    try:
        storage.check_writable(output)
    except storage.StorageError as exc:
        raise JobError(str(exc)) from None


def check_resume_target(output: str | None) -> None:
    """``evaluate --resume`` continues a run: an ``--output`` that holds none is a typo in the
    path (a fresh run would silently score everything again), or a run that never started."""
    if output is None:
        return
    if not storage.exists(results.run_uri(output)) and not results.list_shards(output):
        raise JobError(f"--resume: {output} holds no run (no run.json, no predictions/); check --output, "
                       "or drop --resume to start a new run there")


#: run.json's keys, as the flags that set them (a refused --resume names the flag, not the key)
RUN_FLAGS = {
    "job": "the job",
    "dataset": "--dataset",
    "model": "--model",
    "views": "--views",
    "protocol": "--protocol",
    "precision": "--precision",
    "checkpoint_sha256": "--checkpoint",
    "shard_size": "--shard-size",
    "num_videos": "the video list (--dataset, --video-list, --limit)",
    "videos_sha256": "the video list (--dataset, --video-list, --limit)",
    "save_probs": "--save-probs",
    "features": "--save-features",
}


def flag_value(key: str, value) -> str:
    """A run.json value as the flags that give it."""
    if key == "save_probs":
        return "--save-probs" if value else "--no-save-probs"
    if key == "features":
        if not value:
            return "no --save-features"
        dim = f", {value['dim']} values" if value.get("dim") else ""
        return f"--save-features --features {value['kind']} --features-dtype {value['dtype']}{dim}"
    if key == "checkpoint_sha256":
        return f"sha256 {str(value)[:12]}" if value else "none"
    if key == "videos_sha256":
        return f"list sha256 {str(value)[:12]}"
    if key == "num_videos":
        return f"{value} videos"
    return str(value)


def run_differences(previous: dict, wanted: dict) -> list[str]:
    """What differs between a run.json (``previous``) and this request (``wanted``, any subset of
    its keys), one phrase a key: the flag, this run's value and the earlier run's."""
    out = []
    for key, value in wanted.items():
        old = previous.get(key)
        if key == "features" and old and value and "dim" not in value:  # known before torch: the width is not
            old = {k: v for k, v in old.items() if k != "dim"}
        if key == "videos_sha256" and previous.get("num_videos") != wanted.get("num_videos", previous.get("num_videos")):
            continue  # the count already says it
        if old != value:
            out.append(f"{RUN_FLAGS.get(key, key)}: {flag_value(key, value)} here, {flag_value(key, old)} in the run")
    return out


def check_run_flags(output: str | None, wanted: dict, resume: bool, partition=None) -> None:
    """``evaluate --resume`` (and every ``--partition``, which joins the run it finds): the flags known before torch (model, views, protocol, precision,
    --shard-size, --save-probs, --save-features...) must be the run's, or the resumed shards
    would differ from the finished ones (rows without vectors beside rows with them)."""
    if output is None or not (resume or partition is not None):
        return
    try:
        previous = results.read_run(output)
    except ValueError:
        return  # the job says what is wrong with it
    if previous is None:
        return
    changed = run_differences(previous, wanted)
    if changed:
        what = f"--partition {partition}" if partition is not None else "--resume"
        raise JobError(f"{what}: this run differs from the one in {output}: {'; '.join(changed)}; "
                       "give the run's flags, or use a new --output")


def check_label_features(output: str, save_features: bool) -> None:
    """A label output that stores feature vectors (``features.json``) keeps storing them: a run
    without ``--save-features`` would add rows without vectors, silently. (The other way round
    is allowed: turning features on for an output labelled without them, docs/embeddings.md.)"""
    uri = storage.join(output, "features.json")
    if save_features or not storage.exists(uri):
        return
    try:
        layout = json.loads(storage.read_bytes(uri))
        what = f" ({layout['kind']} {layout['dtype']}[{layout['dim']}])"
    except (ValueError, KeyError, TypeError):
        what = ""
    raise JobError(f"--output {output} stores feature vectors{what}: pass --save-features, so this run's rows have them too, "
                   "or use another --output")


def holds_labels(output: str) -> bool:
    """Whether a label output holds any run: label files, its index or a run's manifest."""
    return storage.exists(output) and any(storage.exists(storage.join(output, part)) for part in ("labels", "label_index", "manifests"))


def check_tidy_output(output: str) -> None:
    """``label --compact`` / ``--rebuild-index`` alone tidy an output that exists: on one that
    does not (a typo) they would do nothing, or make an empty index there, and exit 0."""
    if not holds_labels(output):
        raise JobError(f"--output {output} holds no label run to tidy; check the path (--compact and --rebuild-index "
                       "work on an existing label output)")


def check_label_resume(output: str) -> None:
    """``label --resume`` continues a crashed run: an ``--output`` that holds none is a typo in the
    path, and a run there would label every video again."""
    if not holds_labels(output):
        raise JobError(f"--resume: {output} holds no label run; check --output, or drop --resume to start one there")


def is_list_file(source: str) -> bool:
    return source.lower().endswith(LIST_SUFFIXES)


def check_label_input(source: str) -> None:
    """A local ``--input`` folder or list file that is not there is a typo (in a nightly cron job
    it would label nothing, night after night, with exit 0), not an empty input. An S3 prefix
    with nothing under it is an empty input."""
    if storage.is_remote(source):
        return
    path = storage.local_path(source)
    if is_list_file(source):
        if not os.path.isfile(path):
            raise JobError(f"--input {source}: no such list file")
    elif not os.path.isdir(path):
        what = f"is a file, not a folder or a list file ({', '.join(LIST_SUFFIXES)})" if os.path.exists(path) else "no such folder"
        raise JobError(f"--input {source}: {what}")


def check_dataset_files(spec: DatasetSpec) -> None:
    """The dataset's annotation file, data root and label map exist (a generated dataset is made
    on first use, so it has nothing to check yet). Kinetics-400's entries say how to get it."""
    if spec.generator is not None:
        return
    try:
        check_dataset(spec)
    except DatasetError as exc:
        if spec.published == K400_PUBLISHED:
            raise DatasetError(f"{exc}. {K400_HINT}") from None
        raise


def local_gpus() -> int | None:
    """GPUs a local Ray would see, without importing torch: ``CUDA_VISIBLE_DEVICES`` when set (as
    Ray reads it), else the NVIDIA driver's device list; 0 without a driver; None when unsure."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip()]
        return 0 if ids in ([], ["NoDevFiles"]) or ids[0].strip() == "-1" else len(ids)
    if os.path.isdir("/proc/driver/nvidia/gpus"):
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return sum(1 for line in listed.stdout.splitlines() if line.startswith("GPU ")) if listed.returncode == 0 else None


def local_cpus() -> int:
    """CPUs a local Ray counts on this machine: the CPU count, capped by a cgroup quota."""
    count = os.cpu_count() or 1
    quota = cgroup_quota_cpus()
    return max(1, min(count, int(quota))) if quota is not None else count


def local_shape(num_cpus: int | None = None) -> ClusterShape | None:
    """The one-node cluster a run without ``--address`` starts; None when its GPUs are unknown."""
    gpus = local_gpus()
    if gpus is None:
        return None
    cpus = float(num_cpus or local_cpus())
    return ClusterShape(cpus=cpus, gpus=float(gpus), nodes=1, node_cpus=cpus, cpu_nodes=1)


def starts_local_ray(address: str | None) -> bool:
    """Whether the run will start a Ray of its own on this machine: no ``--address``, no
    ``RAY_ADDRESS``, and no Ray already running in this process (tests, notebooks: the job joins it)."""
    if address or os.environ.get("RAY_ADDRESS"):
        return False
    ray = sys.modules.get("ray")
    return not (ray is not None and ray.is_initialized())


def check_local_fit(spec: ModelSpec, num_actors: int | None, num_cpus: int | None, actors_per_gpu: int = 1) -> None:
    """``--num-actors`` a local Ray on this machine could not hold, refused by the rule that
    sizes the run (``cluster.sizing``). For a run that ``starts_local_ray``: a cluster's shape is
    known only once it is joined."""
    if num_actors is None:
        return
    shape = local_shape(num_cpus)
    if shape is None:
        return
    try:
        size_pipeline(shape, spec, num_actors=num_actors, actors_per_gpu=actors_per_gpu)
    except ClusterError as exc:
        raise ClusterError(f"{exc} (this machine, as a local Ray; pass --address to run on a cluster)") from None
