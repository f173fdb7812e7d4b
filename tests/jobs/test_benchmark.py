"""The benchmark job, short runs on a real local Ray: real MP4s, the bundled x3d_tiny model,
real Parquet writes, a real PNG. What is checked is what the numbers rest on: every stage is
reported, each batch's stages account for its wall time, and the outputs are readable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

import submit
from jobs.benchmark import STAGES, BenchmarkConfig, run_benchmark
from jobs.datasets import resolve_dataset
from tests import videos

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SHORT = dict(duration_s=1.0, repeats=2, warmup_s=0.3)
SHORT_FLAGS = ["--duration", "1", "--repeats", "2", "--warmup", "0.3"]


def _video_list(folder: Path, count: int = 4) -> Path:
    lines = []
    for i in range(count):  # widths 48 and 72 break decord 0.6; 64 and 80 are fine
        videos.write_video(folder / f"v{i}.mp4", num_frames=36 + 4 * i, height=48, width=64 if i % 2 else 80, seed=i)
        lines.append(f"v{i}.mp4 {i}")
    ann = folder / "list.txt"
    ann.write_text("\n".join(lines) + "\n")
    return ann


def _check_batches(trial: dict) -> None:
    assert trial["timed_batches"] == len(trial["batches"]) > 0
    for batch in trial["batches"]:
        assert set(batch["stages_ms"]) == set(STAGES)
        measured = sum(batch["stages_ms"].values())
        # the stages, timed one after another inside each piece of work, cover its wall time
        assert abs(batch["wall_ms"] - measured) <= 0.10 * batch["wall_ms"], batch
        assert batch["other_ms"] == pytest.approx(batch["wall_ms"] - measured, abs=0.01)


def test_benchmark_on_real_videos(tmp_path, ray_local):
    ann = _video_list(tmp_path / "videos")
    out = tmp_path / "bench"
    dataset = resolve_dataset(None, ann_file=str(ann), data_root=str(ann.parent))
    report = run_benchmark(
        BenchmarkConfig(model="x3d_tiny", views=10, dataset=dataset, num_actors=[1], output=str(out), quiet=True, **SHORT)
    )

    on_disk = json.loads((out / "benchmark.json").read_text())
    assert on_disk["trials"][0]["num_actors"] == 1 and on_disk["checkpoint"] is None
    assert "random" in on_disk["weights"]
    (trial,) = on_disk["trials"]
    assert set(trial["stages"]) == {*STAGES, "other"}
    for name in ("read", "decode", "preprocess", "forward", "write"):  # real videos go through all of them
        assert trial["stages"][name]["seconds"] > 0, name
    assert sum(s["share"] for s in trial["stages"].values()) == pytest.approx(1.0, abs=1e-3)
    _check_batches(trial)
    assert trial["videos_failed"] == 0
    assert trial["videos_per_s"]["median"] > 0 and len(trial["videos_per_s"]["windows"]) == 2
    assert trial["clips_per_s"]["median"] == pytest.approx(10 * trial["videos_per_s"]["median"], rel=1e-3)
    assert trial["videos_per_s"]["min"] <= trial["videos_per_s"]["median"] <= trial["videos_per_s"]["max"]
    assert trial["accelerator_util"] is None  # CPU: no accelerator to ask
    assert trial["memory"]["actor_peak_rss_mb"] > 0 and trial["memory"]["decode_peak_rss_mb"] > 0
    assert trial["memory"]["object_store_peak_mb"] is not None
    # The decode worker processes the trial used: its one slot, which does not grow, so one
    # (a worker restarted per video would show here; tests/cluster/test_worker_reuse.py).
    assert trial["decode_slots"] == 1
    assert trial["memory"]["decode_processes"] == 1, (trial["videos_done"], trial["memory"])
    assert on_disk["distinct_videos"] == 4 and on_disk["list_s"] >= 0
    # what the scaling plan reads besides the rates
    assert trial["driver_cpu_ms_per_video"] > 0 and trial["unit_videos"] >= 1
    assert trial["decode_workers_per_1000"] == pytest.approx(1000 * trial["memory"]["decode_processes"] / trial["videos_done"], rel=0.5)
    assert 0 < trial["payload_mb_per_video"] < 30 * 8 * 64 * 64 * 3 / 1e6  # frames, less than the 10 views they make

    machine = on_disk["machine"]
    assert machine["cpu_model"] and machine["cpu_cores"] >= 1 and machine["gpus"] == []
    assert {"ray", "torch", "decord"} <= set(machine["versions"])
    assert report["trials"][0]["videos_per_s"] == trial["videos_per_s"]

    with Image.open(out / "benchmark.png") as image:
        assert image.format == "PNG" and image.size[0] > 0 and image.size[1] > 0
        image.verify()
    md = (out / "benchmark.md").read_text()
    assert "| actors |" in md and "forward %" in md
    assert not (out / "scratch").exists()  # the write stage's target is cleaned up


def test_benchmark_command_synthetic_scaling(tmp_path, ray_local, capsys):
    out = tmp_path / "bench"
    argv = ["benchmark", "--model", "x3d_tiny", "--views", "10", "--num-actors", "1,2", "--output", str(out), *SHORT_FLAGS]
    assert submit.main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "benchmark.json").read_text())
    assert report["input"] == "synthetic"
    assert [t["num_actors"] for t in report["trials"]] == [1, 2]
    for trial in report["trials"]:
        assert trial["stages"]["read"]["ms_per_video"] == 0 and trial["stages"]["decode"]["seconds"] == 0
        assert trial["stages"]["forward"]["seconds"] > 0
        # the synthetic payload is what a 340x256 video ships: 80 frames cut to the 64 px centre crop, and the index
        assert trial["payload_mb_per_video"] == pytest.approx((10 * 8 * 64 * 64 * 3 + 10 * 8 * 8) / 1e6, abs=1e-3)
        assert len(trial["per_actor"]["actors"]) == trial["num_actors"]
        _check_batches(trial)
    assert "| actors |" in printed and "\n| 1 " in printed and "\n| 2 " in printed
    with Image.open(out / "benchmark.png") as image:
        assert image.format == "PNG"


def test_benchmark_usage_errors(tmp_path, ray_local, capsys):
    with pytest.raises(SystemExit) as exc:
        submit.main(["benchmark", "--synthetic", "--dataset", "sample"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        submit.main(["benchmark", "--num-actors", "1,x"])
    assert exc.value.code == 2
    ann = _video_list(tmp_path / "videos", count=1)
    with pytest.raises(SystemExit) as exc:  # 3 CPU actors and their decode slots need 3 CPUs; the cluster has 2
        submit.main(["benchmark", "--model", "x3d_tiny", "--video-list", str(ann), "--data-root", str(ann.parent), "--num-actors", "3"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--synthetic" in err and "1,x" in err and "--num-actors 3 needs 3 CPUs" in err
