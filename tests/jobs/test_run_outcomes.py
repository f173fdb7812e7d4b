"""What a run reports and how it ends, through ``submit.main`` on the session's real local Ray.

* a cluster too small for ``--num-actors`` is refused before anything is written, so the
  corrected command then runs (not ``already holds a run``);
* a run where every video fails exits 3 with one line; error rows name the folder a relative
  path was resolved against;
* summary.json and the label manifest hold exactly the keys docs/output-schemas.md documents,
  with whole-process times split into start-up / generation / scoring;
* the published row appears only on the dataset it was measured on; messages go to stderr.

Also, without Ray: the progress ETA leaves out the actors' warm-up, ``label --plan`` adds the
last run's start-up, and the bf16-on-CPU warning reads the CPU's flags.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.machine import bf16_cpu_warning, cpu_has_bf16
from jobs.progress import Progress
from jobs.schemas import LABEL_MANIFEST_KEYS, SUMMARY_KEYS
from tests import presets
from tests.in_process import run_main
from tests.cluster.evalset import tinted_frames
from tests.videos import write_video

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


_main = run_main


@pytest.fixture(scope="module")
def checkpoint(test_preset_checkpoint: str) -> str:
    return test_preset_checkpoint


def _model(checkpoint: str) -> list[str]:
    return ["--model", presets.NAME, "--checkpoint", checkpoint, "--views", "1"]


def test_too_small_cluster_is_refused_before_writing_then_the_corrected_command_runs(
    ray_local, tmp_path: Path, checkpoint: str, capfd, monkeypatch
):
    """Items 9, 10, 15, 18, 19, 20 on one custom list whose file names hold spaces (tab-separated)."""
    names = ["my clip.mp4", "sub dir/other clip.mp4"]
    for i, name in enumerate(names):
        write_video(tmp_path / "videos" / name, frames=tinted_frames(i, 24, 40, 56), fps=30)
    (tmp_path / "list.txt").write_text("".join(f"{name}\t{i}\n" for i, name in enumerate(names)))
    output = tmp_path / "run"
    command = ["--video-list", "list.txt", "--data-root", "videos", "--separator", "tab", *_model(checkpoint),
               "--output", str(output), "--precision", "bf16"]

    code, out, err = _main([*command, "--num-actors", "4"], capfd, monkeypatch, tmp_path)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "--num-actors 4" in err and "CPUs" in err, err
    assert not output.exists(), "refused after writing: the corrected command would find 'already holds a run'"

    code, out, err = _main(command, capfd, monkeypatch, tmp_path)
    assert code == 0, err
    summary = json.loads((output / "summary.json").read_text())
    assert list(summary) == [k.name for k in SUMMARY_KEYS]  # exactly what docs/output-schemas.md documents
    assert summary["num_ok"] == 2 and summary["videos_this_run"] == 2
    assert summary["published"] == []  # x3d_test's numbers were not measured on this list
    assert "| test " not in out  # ...so no published row is printed either
    assert summary["wall_s"] >= summary["startup_s"] + summary["generate_s"] + summary["scoring_s"]
    assert summary["startup_s"] > 0 and summary["scoring_s"] > 0 and summary["generate_s"] == 0
    assert summary["videos_per_s"] == pytest.approx(2 / summary["scoring_s"], rel=0.01)
    # stdout: the table and one result line with the whole command's time and its parts
    last = out.strip().splitlines()[-1]
    assert f"in {summary['wall_s']:.1f} s (start-up {summary['startup_s']:.1f} s, scoring {summary['scoring_s']:.1f} s)" in last
    assert "evaluate:" not in out and "warning" not in out  # messages for people are on stderr
    assert ("bf16 units" in err) == (cpu_has_bf16() is False), err
    assert sorted(pq.read_table(output / "predictions").column("video").to_pylist()) == sorted(names)


def test_every_video_failing_exits_3_and_names_the_folder(ray_local, tmp_path: Path, checkpoint: str, capfd, monkeypatch):
    """Nothing scored is not success: exit 3 and one line; each error row names the absolute
    folder its relative path was looked for in."""
    (tmp_path / "videos").mkdir()
    (tmp_path / "list.txt").write_text("gone/a.mp4 0\ngone/b.mp4 1\n")
    output = tmp_path / "run"
    code, out, err = _main(["--video-list", "list.txt", "--data-root", "videos", *_model(checkpoint), "--output", str(output),
                            "--quiet"], capfd, monkeypatch, tmp_path)
    assert code == 3, err
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert "none of the 2 videos could be scored" in err and str(tmp_path / "videos" / "gone") in err, err
    errors = pq.read_table(output / "predictions").column("error").to_pylist()
    assert [e.split(":")[0] for e in errors] == [str(tmp_path / "videos" / "gone" / n) for n in ("a.mp4", "b.mp4")]
    assert json.loads((output / "summary.json").read_text())["num_ok"] == 0


def test_label_run_that_labels_nothing_exits_3_and_its_manifest_is_documented(
    ray_local, tmp_path: Path, checkpoint: str, capfd, monkeypatch
):
    (tmp_path / "in").mkdir()
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / "in" / name).write_bytes(b"not a video")
    code, out, err = _main(["label", "--input", "in", "--output", "labels", *_model(checkpoint), "--quiet"],
                           capfd, monkeypatch, tmp_path)
    assert code == 3 and out == "" and err.count("\n") == 1, err
    assert "none of the 2 videos to label could be labelled" in err, err
    (manifest_file,) = (tmp_path / "labels" / "manifests").iterdir()
    manifest = json.loads(manifest_file.read_text())
    assert list(manifest) == [k.name for k in LABEL_MANIFEST_KEYS]
    assert manifest["failed"] == manifest["videos_this_run"] == 2 and manifest["labelled"] == 0
    assert manifest["wall_s"] >= manifest["startup_s"] + manifest["scoring_s"] - 0.01 and manifest["startup_s"] > 0
    assert json.loads((tmp_path / "labels" / "manifest.json").read_text()) == manifest


# --------------------------------------------------------------------------- no Ray


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines += [line for line in text.splitlines() if line]

    def flush(self) -> None:
        pass


def test_progress_eta_leaves_out_the_warm_up():
    """60 s of actor start-up, then one video a second: the ETA is the remaining videos at that
    rate (98 s for 98), not 98 at 2/61 per second (50 minutes)."""
    clock, stream = _Clock(), _Lines()
    progress = Progress(100, stream=stream, every_s=0.0, clock=clock)
    clock.now = 60.0
    progress.update()
    assert "ETA warming up" in stream.lines[-1]
    clock.now = 61.0
    progress.update()
    assert "ETA 1m38s" in stream.lines[-1] and "1.00 videos/s" in stream.lines[-1], stream.lines[-1]
    assert "elapsed 1m01s" in stream.lines[-1]


def test_plan_estimate_adds_the_last_runs_start_up(tmp_path: Path, checkpoint: str):
    from jobs.label import LabelConfig, plan_label

    (tmp_path / "in").mkdir()
    for i in range(3):
        (tmp_path / "in" / f"v{i}.mp4").write_bytes(b"x")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text(json.dumps({"videos_per_s": 0.5, "startup_s": 10.0}))
    cfg = LabelConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), model=presets.NAME, checkpoint=checkpoint, views=1)
    plan = plan_label(cfg)
    assert plan["to_process"] == 3
    assert plan["estimated_s"] == pytest.approx(10.0 + 3 / 0.5)


def test_bf16_warning_reads_the_cpu_flags():
    avx2 = "processor : 0\nflags : fpu sse2 avx avx2 fma\n"
    sapphire = "processor : 0\nflags : fpu avx2 avx512f avx512_bf16 amx_bf16\n"
    graviton = "processor : 0\nFeatures : fp asimd bf16 i8mm\n"
    assert cpu_has_bf16(avx2) is False and cpu_has_bf16(sapphire) is True and cpu_has_bf16(graviton) is True
    assert cpu_has_bf16("no flags here") is None
    assert "3-5x slower" in bf16_cpu_warning("bf16", 0.0, avx2)
    assert bf16_cpu_warning("bf16", 0.0, sapphire) is None
    assert bf16_cpu_warning("bf16", 1.0, avx2) is None  # GPU actors
    assert bf16_cpu_warning("fp32", 0.0, avx2) is None


def test_published_rows_only_on_the_dataset_they_were_measured_on(tmp_path: Path):
    """x3d_tiny's 91.5 % was measured on the sample val videos: beside a sample run it is shown
    (as a fraction, like top1_acc), beside the shuffled control, a custom list or K400 it is not."""
    import pyarrow as pa

    import x3d
    from jobs.datasets import resolve_dataset
    from jobs.schemas import PREDICTION_SCHEMA
    from jobs.summary import build_summary, summary_table

    row = {"video": "a.mp4", "label": 0, "pred": 0, "pred_name": "x", "topk_classes": [0], "topk_scores": [1.0], "probs": None,
           "num_views": 30, "error": None, "decode_ms": 1.0, "infer_ms": 1.0, "worker": "h:1"}
    table = pa.Table.from_pylist([row], schema=PREDICTION_SCHEMA)

    def summary(dataset_name: str | None, **flags) -> dict:
        spec = resolve_dataset(dataset_name, **flags)
        return build_summary(table, dataset=spec.name, versions={}, model="x3d_tiny", views=30, protocol="mmaction2", checkpoint="c",
                             checkpoint_sha256="0" * 64, wall_s=1.0, workers=[], output="o", published_on=spec.published)

    sample = summary("sample")
    assert sample["published"] == [{"source": "bench/train_tiny.py on sample val", "dataset": "sample-val", "protocol": "mmaction2",
                                    "views": 30, "top1_acc": 0.915, "top5_acc": None}]
    assert "| bench/train_tiny.py on sample val | mmaction2 | 91.50" in summary_table(sample)
    (tmp_path / "list.txt").write_text("a.mp4 0\n")
    for other in (summary("sample_shuffled"), summary(None, ann_file=str(tmp_path / "list.txt"), data_root=str(tmp_path))):
        assert other["published"] == [] and "train_tiny" not in summary_table(other)
    k400 = resolve_dataset("k400_val").published
    assert k400 and {p.dataset for p in x3d.get_preset("x3d_s").published} == {k400}
    assert x3d.get_preset("x3d_tiny").published_for(30, dataset=k400) == []
