"""The evaluate job end to end, in process, on a real local Ray instance.

Real videos, a real (random-weight) checkpoint, real Ray tasks and actors, real Parquet on
local disk and on an S3 server (moto over HTTP). The oracle is ``x3d.predict_video``: the job
must give every video exactly the scores the library gives it in one process, and
``summary.json`` must hold the accuracy computed here from the labels.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

import x3d
from x3d import storage
from jobs.datasets import resolve_dataset
from jobs.errors import JobError
from jobs.evaluate import EvaluateConfig, run_evaluate
from jobs.partition import Partition
from tests import videos
from tests.cluster.evalset import (
    ACC_KEYS,
    PRESET,
    PROB_TOL,
    VIEWS,
    EvalSet,
    expected_accuracy,
    ray_node_id,
    write_video_list,
)

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]



def config(ev: EvalSet, output: str, ann_file: Path | None = None, data_root: Path | None = None, **kw) -> EvaluateConfig:
    spec = resolve_dataset(None, data_root=str(data_root or ev.root), ann_file=str(ann_file or ev.ann_file))
    kw.setdefault("shard_size", 4)
    kw.setdefault("quiet", True)
    return EvaluateConfig(dataset=spec, model=PRESET, checkpoint=str(ev.checkpoint), views=VIEWS, output=output, **kw)


def read_local(output: Path) -> dict[str, list]:
    """The predictions with nothing but plain pyarrow.dataset."""
    return ds.dataset(str(output / "predictions"), format="parquet").to_table().to_pydict()


@pytest.fixture(scope="module")
def local_run(evalset: EvalSet, ray_local, tmp_path_factory) -> tuple[Path, dict, str, str]:
    """One undisturbed run to a local folder; also records the Ray node before and after."""
    output = tmp_path_factory.mktemp("local") / "run"
    before = ray_node_id()
    summary = run_evaluate(config(evalset, str(output)))
    return output, summary, before, ray_node_id()


def test_run_uses_the_callers_ray_and_leaves_it_running(local_run):
    import ray

    _, _, before, after = local_run
    assert ray.is_initialized()
    assert before == after  # neither re-initialised nor shut down


def test_predictions_equal_predict_video(evalset: EvalSet, local_run):
    output, _, _, _ = local_run
    rows = read_local(output)
    assert rows["video"] == evalset.names  # one row each, in annotation order (shard order)
    assert rows["label"] == [evalset.labels[n] for n in evalset.names]
    classes = x3d.get_preset(PRESET).classes
    for i, name in enumerate(evalset.names):
        probs = np.asarray(rows["probs"][i], dtype=np.float32)
        ref = evalset.probs[name]
        assert probs.shape == ref.shape == (400,)
        assert np.abs(probs - ref).max() < PROB_TOL, name
        assert rows["error"][i] is None
        assert rows["pred"][i] == evalset.pred(name)
        assert rows["pred_name"][i] == classes[evalset.pred(name)]
        assert rows["topk_classes"][i] == evalset.topk(name)
        np.testing.assert_allclose(rows["topk_scores"][i], ref[evalset.topk(name)], atol=PROB_TOL)
        assert rows["num_views"][i] == VIEWS
        assert rows["worker"][i].rsplit(":", 1)[1].isdigit()
    # The random model must actually tell the videos apart, or the comparison proves little.
    assert len(set(rows["pred"])) >= 3
    all_probs = np.asarray(rows["probs"])
    gaps = [np.abs(all_probs[i] - all_probs[j]).max() for i in range(len(all_probs)) for j in range(i)]
    assert min(gaps) > 1e-3


def test_summary_accuracy_matches_labels(evalset: EvalSet, local_run):
    output, returned, _, _ = local_run
    summary = json.loads((output / "summary.json").read_text())
    assert summary == json.loads(json.dumps(returned))
    expected = expected_accuracy([(evalset.labels[n], evalset.topk(n)) for n in evalset.names])
    assert 0 < expected["top1"] < expected["top5"] < 1  # the labels exercise every metric
    assert summary["top1_acc"] == pytest.approx(expected["top1"])
    assert summary["top5_acc"] == pytest.approx(expected["top5"])
    assert summary["mean_class_acc"] == pytest.approx(expected["mean_class"])
    for key in ("top1", "top5", "mean_class"):  # no failures: the two views agree
        assert summary[f"{key}_acc_with_failures"] == pytest.approx(expected[key])
    assert (summary["num_videos"], summary["num_ok"], summary["num_failed"]) == (10, 10, 0)
    assert (summary["model"], summary["views"], summary["protocol"]) == (PRESET, VIEWS, "mmaction2")
    assert summary["checkpoint_sha256"] == x3d.checkpoints.file_sha256(evalset.checkpoint)
    assert summary["published"] == []  # a dataset given by flags alone: no published number was measured on it
    assert summary["accelerators"] == ["cpu"] and summary["num_workers"] == 1
    assert summary["wall_s"] > 0 and summary["videos_per_s"] > 0
    assert summary["wall_s"] >= summary["startup_s"] + summary["generate_s"] + summary["scoring_s"] > 0
    assert sorted(p.name for p in (output / "predictions").iterdir()) == [f"part-0000{i}.parquet" for i in range(3)]
    run = json.loads((output / "run.json").read_text())
    assert (run["model"], run["views"], run["num_videos"], run["shard_size"]) == (PRESET, VIEWS, 10, 4)
    assert "| this run | mmaction2 |" in (output / "summary.md").read_text()


def test_s3_output_equals_local(evalset: EvalSet, local_run, s3_env: str, s3_server: str):
    import boto3
    import pyarrow.fs

    output, local_summary, _, _ = local_run
    uri = f"s3://{s3_env}/run1"
    summary = run_evaluate(config(evalset, uri))

    keys = sorted(o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_env)["Contents"])
    assert keys == ["run1/predictions/part-00000.parquet", "run1/predictions/part-00001.parquet",
                    "run1/predictions/part-00002.parquet", "run1/run.json", "run1/summary.json", "run1/summary.md"]
    # Plain pyarrow, its own S3 client: what a user's notebook would do.
    fs = pyarrow.fs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1", endpoint_override=s3_server)
    remote = ds.dataset(f"{s3_env}/run1/predictions", format="parquet", filesystem=fs).to_table().to_pydict()
    local = read_local(output)
    for column in ("video", "label", "pred", "pred_name", "topk_classes", "num_views", "error"):
        assert remote[column] == local[column], column
    np.testing.assert_allclose(np.asarray(remote["probs"]), np.asarray(local["probs"]), atol=PROB_TOL, rtol=0)

    stored = json.loads(storage.read_bytes(f"{uri}/summary.json"))
    assert stored["output"] == uri
    for key in ACC_KEYS + ("num_videos", "num_ok", "num_failed"):
        assert stored[key] == summary[key] == local_summary[key], key


def test_bad_videos_become_error_rows(evalset: EvalSet, ray_local, tmp_path: Path):
    root = tmp_path / "data"
    good = [evalset.names[i] for i in (0, 3, 7)]
    for name in good:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(evalset.root / name, root / name)
    broken = videos.write_broken_videos(root / "broken", root / good[0])
    bad = {kind: f"broken/{path.name}" for kind, path in broken.items()}
    assert not broken["missing"].exists() and broken["zero"].stat().st_size == 0
    entries = [(good[0], evalset.labels[good[0]]), (bad["missing"], 1), (bad["zero"], 2), (good[1], evalset.labels[good[1]]),
               (bad["truncated"], 3), (bad["text"], 4), (good[2], evalset.labels[good[2]])]
    ann = write_video_list(tmp_path / "list.txt", entries)
    output = tmp_path / "out"

    summary = run_evaluate(config(evalset, str(output), ann_file=ann, data_root=root, shard_size=3))

    rows = read_local(output)
    assert rows["video"] == [name for name, _ in entries]  # every video has its row, in order
    for i, (name, label) in enumerate(entries):
        assert rows["label"][i] == label
        if name in good:
            assert rows["error"][i] is None
            assert np.abs(np.asarray(rows["probs"][i]) - evalset.probs[name]).max() < PROB_TOL
            continue
        error = rows["error"][i]
        assert isinstance(error, str) and error.strip() and "\n" not in error, (name, error)
        assert Path(name).name in error, error  # says which file
        assert rows["pred"][i] is None and rows["pred_name"][i] is None and rows["probs"][i] is None
        assert rows["topk_classes"][i] == [] and rows["topk_scores"][i] == []
        assert rows["num_views"][i] == 0

    assert (summary["num_videos"], summary["num_ok"], summary["num_failed"]) == (7, 3, 4)
    ok = expected_accuracy([(evalset.labels[n], evalset.topk(n)) for n in good])
    with_failures = expected_accuracy([(label, evalset.topk(name) if name in good else None) for name, label in entries])
    for key in ("top1", "top5", "mean_class"):
        assert summary[f"{key}_acc"] == pytest.approx(ok[key]), key
        assert summary[f"{key}_acc_with_failures"] == pytest.approx(with_failures[key]), key
    assert summary["top1_acc_with_failures"] < summary["top1_acc"] or summary["top1_acc"] == 0
    assert json.loads((output / "summary.json").read_text())["num_failed"] == 4


def test_two_partitions_one_after_the_other_write_the_single_runs_output(evalset: EvalSet, local_run, tmp_path: Path, capfd):
    """--partition 0/2 then 1/2 into one output: every video's row exactly once, the single
    run's rows and run.json, and only the partition that completes the run writes the summary."""
    single, single_summary, _, _ = local_run
    output = tmp_path / "parts"
    capfd.readouterr()

    # shard_size 4: shards 0, 1, 2 of 4, 4 and 2 videos; partition 0/2 owns 0 and 2 (6 videos), 1/2 owns 1 (4)
    assert run_evaluate(config(evalset, str(output), partition=Partition(0, 2), quiet=False)) is None
    out, err = capfd.readouterr()
    assert sorted(p.name for p in (output / "predictions").iterdir()) == ["part-00000.parquet", "part-00002.parquet"]
    assert (output / "run.json").read_bytes() == (single / "run.json").read_bytes()  # no partition in it: all write the same
    assert not (output / "summary.json").exists() and not (output / "summary.md").exists()
    assert "partition 0/2 done" in out and "1 of the run's 3 shards are still missing" in out
    assert "partition 0/2: 6 videos in 2 shards" in err
    assert "6/6 videos" in err and "/10 videos" not in err  # progress counts this partition's videos

    with pytest.raises(JobError, match="already holds 2 shard.s. of partition 0/2; pass --resume"):
        run_evaluate(config(evalset, str(output), partition=Partition(0, 2)))
    with pytest.raises(JobError, match="--partition 1/2: this run differs from the one in .*: --shard-size: 5 here, 4 in the run"):
        run_evaluate(config(evalset, str(output), partition=Partition(1, 2), shard_size=5))

    summary = run_evaluate(config(evalset, str(output), partition=Partition(1, 2)))
    rows, expected = read_local(output), read_local(single)
    assert rows["video"] == evalset.names  # each video once, in annotation order
    for column in ("video", "label", "pred", "pred_name", "topk_classes", "num_views", "error"):
        assert rows[column] == expected[column], column
    np.testing.assert_allclose(np.asarray(rows["probs"]), np.asarray(expected["probs"]), atol=PROB_TOL, rtol=0)
    assert summary is not None and json.loads((output / "summary.json").read_text()) == json.loads(json.dumps(summary))
    for key in ACC_KEYS + ("num_videos", "num_ok", "num_failed"):  # recomputed from every partition's files
        assert summary[key] == single_summary[key], key

    # A partition run again with --resume scores nothing and, the run being complete, writes the
    # summary: what finishes a run whose partitions all ended at the same instant.
    (output / "summary.json").unlink()
    again = run_evaluate(config(evalset, str(output), partition=Partition(0, 2), resume=True))
    assert again is not None and again["num_videos"] == 10 and (output / "summary.json").exists()
    # The summary says which driver's times and rates it holds (issue 30).
    assert again["partition"] == "0/2" and "written by partition 0/2" in (output / "summary.md").read_text()

    # Later partitions that score nothing leave that summary alone: one whose shards are saved...
    kept = {name: (output / name).read_bytes() for name in ("summary.json", "summary.md", "run.json")}
    assert run_evaluate(config(evalset, str(output), partition=Partition(1, 2), resume=True)) == again
    assert {name: (output / name).read_bytes() for name in kept} == kept
    # ...and, through the command line, one that has no shard at all (3 shards, 6 partitions: 5/6 owns none), which
    # used to print nothing and overwrite the summary with its own empty figures.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PYTHONPATH=str(ROOT), X3D_PRESETS_MODULE="tests.presets")
    proc = subprocess.run([sys.executable, str(ROOT / "submit.py"), "evaluate", "--video-list", str(evalset.ann_file),
                           "--data-root", str(evalset.root), "--model", PRESET, "--checkpoint", str(evalset.checkpoint),
                           "--views", str(VIEWS), "--shard-size", "4", "--output", str(output), "--partition", "5/6"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    assert proc.stderr.count("\n") == 1 and "partition 5/6 has no shards of its own: the run has 3 shard(s)" in proc.stderr, proc.stderr
    assert {name: (output / name).read_bytes() for name in kept} == kept
