"""Seconds per video: MMAction2 1.2.0's own inference vs x3d, same checkpoint, same videos, one run.

Generates a few synthetic videos (PyAV, H.264: 340x256 and 320x240 landscape and one
256x340 portrait, 30 and 25 fps, 3-6 s), writes a random-weight checkpoint in MMAction2's
layout, then for every video, in this order:

  (a) mmaction2     ``inference_recognizer(init_recognizer(packaged config, ckpt, "cpu"), video)``
  (b) x3d           ``x3d.predict_video(load_model(name, ckpt), video, name, views)``
  (c) x3d job path  ``prepare_views`` (the decode task) + ``worker.model_runner.ModelRunner.score`` (the
                    model actor: BatchNorm folded, channels_last_3d, ``--batch-size`` clips per
                    forward), timed in its two halves; the same code the Ray job runs
  (d) decode only   MMAction2's ``test_pipeline`` (Compose of its transforms) vs x3d's
                    ``prepare_views``: where (a) and (b) spend their non-model time

and prints seconds per video for each, the ratios, and the largest |delta prob| between
MMAction2's ``pred_score`` and ours. (a)-(d) run in one process: same torch threads, same
decoders. Then, after the loop:

  (e) the Ray job   ``python submit.py evaluate`` on the same videos and checkpoint, listed
                    ``--job-repeat`` times each (hard links under other names), as a user runs it:
                    a local Ray sized by the job itself (its own threads and decode slots, all of
                    the machine's cores), Parquet out. Seconds per video over its pipeline
                    (``summary.json``'s ``wall_s``: first decode to last row, actor start
                    included) and over the whole command (Python, Ray and checkpoint start too),
                    and |delta prob| of its saved scores against (a)'s. Its steady state is the
                    actor's own forward time per video (the ``infer_ms`` column): a model-bound
                    run keeps the actor's next call queued, so a long run tends to that rate.

    python bench/compare_mmaction2.py                          # X3D-S, 30 views, 3 videos
    python bench/compare_mmaction2.py --videos 6 --views 10
    python bench/compare_mmaction2.py --model x3d_m --views 10 --videos 2 --no-job-path
    python bench/compare_mmaction2.py --batch-size 0                # (c) forwards all views at once
    python bench/compare_mmaction2.py --videos 6 --threads 2 --job-repeat 4  # issue 9's run

X3D-S at 30 views is ~82 GMAC (~164 GFLOP) of model per video per method; the default of three
videos keeps the whole run to about three minutes on 2 quiet cores.

Why one script of ~460 lines: (a)-(e) must run on the same videos, checkpoint and machine in
one process to be comparable, and each is short; bench/ scripts import its inputs.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import types
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import x3d  # noqa: E402
from jobs.machine import cpu_model, load_average_text as load_average  # noqa: E402
from x3d.checkpoints import save_mmaction2_checkpoint  # noqa: E402

#: (width, height, fps, seconds): landscape 340x256 / 320x240, one portrait, 30 and 25 fps.
VIDEO_SPECS = [
    (340, 256, 30, 4.0),
    (256, 340, 30, 3.0),
    (320, 240, 25, 5.0),
    (340, 256, 25, 6.0),
    (320, 240, 30, 3.5),
    (340, 256, 30, 5.0),
]

CONFIGS = {
    "x3d_s": "recognition/x3d/x3d_s_13x6x1_facebook-kinetics400-rgb.py",
    "x3d_m": "recognition/x3d/x3d_m_16x5x1_facebook-kinetics400-rgb.py",
}


# --------------------------------------------------------------------------- inputs


def synthetic_frames(width: int, height: int, num_frames: int, seed: int) -> np.ndarray:
    """uint8 (T, H, W, 3): a drifting colour gradient, a moving square and fine texture."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 64, size=(height, width + num_frames * 2), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    side = min(width, height) // 4
    for t in range(num_frames):
        frames[t, ..., 0] = (xx * 255 // width + 2 * t) % 256
        frames[t, ..., 1] = (yy * 255 // height + 3 * t) % 256
        frames[t, ..., 2] = texture[:, 2 * t : 2 * t + width] * 3
        x0 = int((width - side) * (0.5 + 0.5 * np.sin(t / 9.0 + seed)))
        y0 = int((height - side) * (0.5 + 0.5 * np.cos(t / 13.0 + seed)))
        frames[t, y0 : y0 + side, x0 : x0 + side] = (255, 255 - 4 * seed % 256, 40)
    return frames


def write_videos(folder: Path, count: int) -> list[tuple[Path, tuple]]:
    import av

    out = []
    for i in range(count):
        width, height, fps, seconds = VIDEO_SPECS[i % len(VIDEO_SPECS)]
        frames = synthetic_frames(width, height, int(round(fps * seconds)), seed=i)
        path = folder / f"synthetic_{i:02d}_{width}x{height}_{fps}fps.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": "20", "preset": "veryfast"}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        out.append((path, (width, height, fps, seconds, len(frames))))
    return out


def random_checkpoint(name: str, path: Path, seed: int = 0) -> Path:
    """Random weights with non-trivial BN statistics and logits scaled to a useful softmax range."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = x3d.build_model(name)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                c = module.num_features
                module.weight.copy_(1 + 0.1 * torch.randn(c, generator=gen))
                module.bias.copy_(0.1 * torch.randn(c, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                module.num_batches_tracked.fill_(1000)
        proto = x3d.get_preset(name).protocol()
        probe = torch.randn(1, 3, proto.clip_len, 64, 64, generator=gen)
        logits = model.eval()(probe)
        scale = 2.0 / float(logits.std().clamp_min(1e-6))
        model.cls_head.fc2.weight.mul_(scale)
        model.cls_head.fc2.bias.mul_(scale)
    return save_mmaction2_checkpoint(model, path, meta={"note": "random weights for bench/compare_mmaction2.py"})


# --------------------------------------------------------------------------- mmaction2


def import_mmaction():
    """Import mmaction's APIs, patching two gaps of this environment in this process only.

    The 1.2.0 wheel lacks ``localizers/drn`` (stubbed with a dummy ``DRN``), and
    ``mmaction.utils.dependency`` imports the ``importlib_metadata`` backport, which may be
    absent; the standard library's ``importlib.metadata`` has the two names it uses.
    """
    try:
        import importlib_metadata  # noqa: F401
    except ImportError:
        import importlib.metadata

        sys.modules["importlib_metadata"] = importlib.metadata
    name = "mmaction.models.localizers.drn"
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = []
        mod = types.ModuleType(name + ".drn")

        class DRN:  # never built: X3D does not need it
            pass

        mod.DRN = DRN
        pkg.drn = mod
        sys.modules[name] = pkg
        sys.modules[name + ".drn"] = mod
    import warnings

    warnings.filterwarnings("ignore", message=".*MultiScaleDeformableAttention.*")  # mmcv-lite notice
    import mmaction
    from mmaction.apis import inference_recognizer, init_recognizer
    from mmengine import Config
    from mmengine.dataset import Compose

    return mmaction, init_recognizer, inference_recognizer, Config, Compose


def mm_config(Config, mmaction_pkg, model: str, views: int):
    root = Path(mmaction_pkg.__file__).parent / ".mim" / "configs"
    cfg = Config.fromfile(str(root / CONFIGS[model]))
    plan = x3d.get_preset(model).protocol().view_plan(views)
    clips = [t for t in cfg.test_pipeline if t["type"] == "SampleFrames"][0]
    clips["num_clips"] = plan.num_clips
    if plan.crop_mode == "center":  # 10 views = 10 clips x CenterCrop (MMAction2's 10-view test)
        for i, t in enumerate(cfg.test_pipeline):
            if t["type"] == "ThreeCrop":
                cfg.test_pipeline[i] = dict(type="CenterCrop", crop_size=plan.crop_size)
    return cfg


# --------------------------------------------------------------------------- run


def run_ray_job(args, folder: Path, videos, ckpt: Path, mm_probs: dict[str, np.ndarray]) -> dict:
    """(e): ``submit.py evaluate`` on every video ``--job-repeat`` times; its times and scores."""
    import json
    import subprocess

    from jobs import results

    job_dir = folder / "ray_job"
    clips = job_dir / "videos"
    clips.mkdir(parents=True, exist_ok=True)
    source_of: dict[str, str] = {}
    lines = []
    for copy in range(args.job_repeat):
        for path, _ in videos:
            name = f"r{copy}_{path.name}"
            target = clips / name
            if not target.exists():
                try:
                    os.link(path, target)
                except OSError:
                    shutil.copyfile(path, target)
            source_of[name] = path.name
            lines.append(f"{name} 0")
    ann = job_dir / "videos.txt"
    ann.write_text("\n".join(lines) + "\n")
    output = job_dir / "run"
    shutil.rmtree(output, ignore_errors=True)
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, str(root / "submit.py"), "evaluate", "--ann-file", str(ann), "--data-root", str(clips),
               "--model", args.model, "--checkpoint", str(ckpt), "--views", str(args.views), "--output", str(output),
               "--quiet"]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=root, capture_output=True, text=True)
    command_wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"(e) the Ray job failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((output / "summary.json").read_text())
    table = results.read_predictions(str(output)).to_pylist()
    errors = [r for r in table if r["error"]]
    if errors or len(table) != len(lines):
        raise SystemExit(f"(e) the Ray job scored {len(table)} of {len(lines)} videos, {len(errors)} with errors")
    dps, top1 = [], 0
    forward_s = statistics.median(row["infer_ms"] for row in table) / 1000.0
    for row in table:
        ref = mm_probs[source_of[Path(row["video"]).name]]
        probs = np.asarray(row["probs"], dtype=np.float32)
        dps.append(float(np.abs(ref - probs).max()))
        top1 += int(int(probs.argmax()) == int(ref.argmax()))
    return {
        "videos": len(table),
        "pipeline_wall_s": summary["wall_s"],
        "command_wall_s": command_wall,
        "pipeline_s": summary["wall_s"] / len(table),
        "command_s": command_wall / len(table),
        "forward_s": forward_s,
        "dp": max(dps),
        "top1": top1,
        "actors": f"{summary['num_workers']} model actor(s) on {', '.join(summary['accelerators'])}",
    }


def fmt_row(cells, widths):
    return "| " + " | ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default="x3d_s")
    parser.add_argument("--views", type=int, choices=(10, 30), default=30)
    parser.add_argument("--videos", type=int, default=3, help=f"synthetic videos, 1-{len(VIDEO_SPECS)} distinct (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave torch's)")
    parser.add_argument("--no-job-path", action="store_true", help="skip (c)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="(c): clips per forward, 0 = all views in one (default: the job's CPU choice, worker.model_runner.cpu_batch_size)")
    parser.add_argument("--no-decode-split", action="store_true", help="skip (d)")
    parser.add_argument("--job-repeat", type=int, default=4,
                        help="(e): the Ray job scores each video this many times [4]; 0 skips (e)")
    parser.add_argument("--workdir", default=None, help="keep videos and checkpoint here (default: a temp dir, removed)")
    args = parser.parse_args(argv)
    if args.videos < 1:
        parser.error("--videos must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    wall0 = time.perf_counter()
    mmaction, init_recognizer, inference_recognizer, Config, Compose = import_mmaction()
    import cv2
    import decord
    import mmcv
    import mmengine

    print(f"# MMAction2 vs x3d, seconds per video ({args.model}, {args.views} views, CPU, one process)")
    print(f"date:      {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    print(f"cpu:       {cpu_model()}, {os.cpu_count()} logical cores ({platform.machine()})")
    print(f"torch:     {torch.__version__}, threads={torch.get_num_threads()}, interop={torch.get_num_interop_threads()}")
    print(f"versions:  mmaction2 {mmaction.__version__}, mmcv {mmcv.__version__}, mmengine {mmengine.__version__}, "
          f"decord {decord.__version__}, opencv {cv2.__version__}, python {platform.python_version()}")
    print(f"loadavg:   {load_average()} (before)")

    tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="x3d-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        videos = write_videos(tmp, args.videos)
        ckpt = random_checkpoint(args.model, tmp / f"{args.model}_random_mmaction2.pth")
        cfg = mm_config(Config, mmaction, args.model, args.views)
        proto = x3d.get_preset(args.model).protocol()
        plan = proto.view_plan(args.views)

        import contextlib
        import io
        import logging

        from mmengine.logging import MMLogger

        MMLogger.get_current_instance().setLevel(logging.ERROR)  # load_checkpoint / FileClient chatter
        with contextlib.redirect_stdout(io.StringIO()):
            mm_model = init_recognizer(cfg, str(ckpt), device="cpu")
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        mm_keys = set(mm_model.state_dict())
        key_note = "identical" if mm_keys == set(saved) else (
            f"MISMATCH: {len(mm_keys - set(saved))} missing, {len(set(saved) - mm_keys)} unexpected")
        mm_pipeline = Compose(cfg.test_pipeline)
        ours = x3d.load_model(args.model, checkpoint=ckpt)
        runner = None
        if not args.no_job_path:
            from worker.model_runner import ModelRunner
            from worker.spec import ModelSpec

            spec = ModelSpec(x3d.get_preset(args.model), args.views)
            batch = spec.test_protocol().view_plan(args.views).views if args.batch_size == 0 else args.batch_size
            runner = ModelRunner(spec, ours.state_dict(), device="cpu", batch_size=batch)

        print(f"protocol:  {proto.clip_len}x{proto.frame_interval}x{plan.num_clips} clips, resize short side "
              f"{proto.resize_short}, {plan.num_crops} x {plan.crop_mode} crop {plan.crop_size}; one forward of "
              f"{plan.views} views per video in (a) and (b)")
        runner_note = "none" if runner is None else (
            f"BN folded={runner.fold_bn}, channels_last={runner.channels_last}, batch {runner.batch_size or 'all views'}")
        print(f"job path:  {runner_note}")
        print(f"ckpt:      random weights, MMAction2 layout; MMAction2 model keys vs checkpoint: {key_note}")
        print(f"videos:    {len(videos)} synthetic H.264: " + ", ".join(
            f"{w}x{h}@{fps}fps/{n}f" for _, (w, h, fps, _, n) in videos))
        print(f"setup:     {time.perf_counter() - wall0:.1f} s (imports, videos, checkpoint, both models)")
        print()

        cols = ["video", "(a) mmaction2", "(b) x3d", "(c) x3d job", "(c) decode", "(c) model",
                "(d) mm pipeline", "(d) x3d decode", "|dp| (b)", "|dp| (c)", "top1 =="]
        widths = [max(len(c), 20) if i == 0 else len(c) for i, c in enumerate(cols)]
        print(fmt_row(cols, widths))
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|", flush=True)

        def run_mm(path, r, out):
            start = time.perf_counter()
            result = inference_recognizer(mm_model, str(path))
            r["a"] = time.perf_counter() - start
            out["mm"] = result.pred_score.detach().float().cpu().numpy()

        def run_ours(path, r, out):
            start = time.perf_counter()
            out["ours"] = x3d.predict_video(ours, str(path), args.model, args.views)
            r["b"] = time.perf_counter() - start

        def run_job_path(path, r, out):
            start = time.perf_counter()
            prepared = x3d.prepare_views(str(path), args.model, args.views)
            mid = time.perf_counter()
            probs = runner.score([prepared.views]).probs
            out["job"] = probs[0]
            end = time.perf_counter()
            r["c"], r["c_dec"], r["c_model"] = end - start, mid - start, end - mid

        mm_probs: dict[str, np.ndarray] = {}
        methods = [run_mm, run_ours] + ([run_job_path] if runner is not None else [])
        rows = []
        cpu0, loop0 = time.process_time(), time.perf_counter()
        for i, (path, (w, h, fps, _, n)) in enumerate(videos):
            r, out = {}, {}
            # rotate the order of (a), (b), (c) from video to video so that a change in the
            # machine's load does not always land on the same method
            for method in methods[i % len(methods):] + methods[: i % len(methods)]:
                method(path, r, out)
            p_mm = out["mm"]
            mm_probs[path.name] = p_mm
            r["top_p"] = float(p_mm.max())
            r["dp_b"] = float(np.abs(p_mm - out["ours"]).max())
            top1 = int(p_mm.argmax()) == int(out["ours"].argmax())
            if "job" in out:
                r["dp_c"] = float(np.abs(p_mm - out["job"]).max())
                top1 = top1 and int(out["job"].argmax()) == int(p_mm.argmax())

            if not args.no_decode_split:
                start = time.perf_counter()
                mm_pipeline(dict(filename=str(path), label=-1, start_index=0, modality="RGB"))
                r["d_mm"] = time.perf_counter() - start
                start = time.perf_counter()
                x3d.prepare_views(str(path), args.model, args.views)
                r["d_ours"] = time.perf_counter() - start
            r["top1"] = top1
            rows.append(r)

            def s(key, digits=2):
                return f"{r[key]:.{digits}f}" if key in r else "-"

            print(fmt_row([f"{w}x{h} {fps}fps {n}f", s("a"), s("b"), s("c"), s("c_dec"), s("c_model"), s("d_mm"),
                           s("d_ours"), f"{r['dp_b']:.1e}", f"{r['dp_c']:.1e}" if "dp_c" in r else "-",
                           "yes" if top1 else "NO"], widths), flush=True)

        def agg(fn, key):
            vals = [r[key] for r in rows if key in r]
            return fn(vals) if vals else None

        for label, fn in (("mean", statistics.fmean), ("median", statistics.median)):
            cells = [label]
            for key in ("a", "b", "c", "c_dec", "c_model", "d_mm", "d_ours"):
                v = agg(fn, key)
                cells.append("-" if v is None else f"{v:.2f}")
            cells += ["", "", ""]
            print(fmt_row(cells, widths))
        cpu_share = (time.process_time() - cpu0) / (time.perf_counter() - loop0)
        print()
        print(f"loadavg:   {load_average()} (after); total wall {time.perf_counter() - wall0:.0f} s; process CPU s per "
              f"wall s while measuring: {cpu_share:.2f} (~{torch.get_num_threads()} if the cores were ours alone)")
        print()

        job = None
        if args.job_repeat > 0:
            print("(e) the Ray job ...", flush=True)
            job = run_ray_job(args, tmp, videos, ckpt, mm_probs)
            print(f"(e) {job['videos']} videos: pipeline {job['pipeline_wall_s']:.1f} s, whole command "
                  f"{job['command_wall_s']:.1f} s", flush=True)
            print()
        med = {k: agg(statistics.median, k) for k in ("a", "b", "c", "c_dec", "c_model", "d_mm", "d_ours")}
        print("Summary (medians over videos, seconds per video):")
        print(f"  (a) MMAction2 inference_recognizer   {med['a']:.2f} s")
        print(f"  (b) x3d.predict_video                {med['b']:.2f} s   MMAction2 / x3d = {med['a'] / med['b']:.2f}x")
        if med["c"] is not None:
            print(f"  (c) x3d job path                     {med['c']:.2f} s   MMAction2 / x3d job = "
                  f"{med['a'] / med['c']:.2f}x  (decode {med['c_dec']:.2f} s + model {med['c_model']:.2f} s)")
        if med["d_mm"] is not None:
            print(f"  (d) decode+resize+crop: MMAction2 pipeline {med['d_mm']:.2f} s, x3d prepare_views "
                  f"{med['d_ours']:.2f} s ({med['d_mm'] / med['d_ours']:.2f}x)")
            print(f"      => model part: MMAction2 ~{med['a'] - med['d_mm']:.2f} s (a - d), "
                  f"x3d ~{med['b'] - med['d_ours']:.2f} s (b - d)"
                  + (f", x3d job {med['c_model']:.2f} s (measured)" if med["c"] is not None else ""))
        if med["a"] is not None and job is not None:
            print(f"  (e) the Ray job, {job['videos']} videos ({len(videos)} x {args.job_repeat}), {job['actors']}: pipeline "
                  f"{job['pipeline_s']:.2f} s/video (MMAction2 / job = {med['a'] / job['pipeline_s']:.2f}x), whole "
                  f"command {job['command_s']:.2f} s/video ({med['a'] / job['command_s']:.2f}x); max |dp| vs (a) "
                  f"{job['dp']:.2e}, top-1 agrees on {job['top1']}/{job['videos']}")
            print(f"      steady state: the actor's own forward time, median {job['forward_s']:.2f} s/video "
                  f"({med['a'] / job['forward_s']:.2f}x): a model-bound run keeps the actor's next call queued, "
                  "so a long run's s/video tends to it")
        dp_b = max(r["dp_b"] for r in rows)
        dp_c = max((r["dp_c"] for r in rows if "dp_c" in r), default=None)
        print(f"  max |prob(MMAction2) - prob(x3d)| over {len(rows)} videos x 400 classes: {dp_b:.2e} (b)"
              + (f", {dp_c:.2e} (c, job path)" if dp_c is not None else "")
              + f"; top-1 agrees on {sum(r['top1'] for r in rows)}/{len(rows)}; MMAction2's top-1 prob "
              f"{min(r['top_p'] for r in rows):.3f}-{max(r['top_p'] for r in rows):.3f}")
        return 0
    finally:
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
