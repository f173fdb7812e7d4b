"""bf16 autocast against the fp32 reference: what it does to the scores, and to the speed.

Scores every view of every video twice, in fp32 and under bf16 autocast (``--precision bf16``
of the jobs), with the Ray job's own model half (``worker.model_runner.ModelRunner``: same memory
layout, normalisation and fusion) on one device, and prints

- max and mean |Δprob| of the fused scores (per class, over all videos), and the mean over
  videos of each video's largest |Δprob|;
- top-1 agreement (videos whose argmax is unchanged) and top-5 overlap (mean shared classes / 5);
- clips/s of each precision (model half only: decoding is done once, before timing, and shared);

with the machine (CPU model and flags that matter for bf16, GPU, versions, threads, load).

    python bench/precision_effect.py                                  # X3D-S, 30 views, 3 generated videos, best device
    python bench/precision_effect.py --model x3d_s --views 10 --videos 3 --device cpu
    python bench/precision_effect.py --model x3d_m --device cuda --checkpoint x3d_m.pth --video a.mp4 --video b.mp4

Without ``--checkpoint`` the weights are random (``compare_mmaction2.random_checkpoint``: BN
statistics jittered, logits scaled to std 2). Such a network gives every video nearly the same
scores, so |Δprob| then measures bf16 rounding on the probability scale, and top-1 agreement
says nothing. ``--head recentre`` re-centres the classifier on the clips' mean fp32 feature and
scales it to ``--logit-std`` per view, which spreads the predictions but amplifies the rounding
exactly as much as the (tiny) differences between videos. The ``separation`` line says which
case a run is in: the spread of the fp32 scores between videos over their change under bf16.
Only a model that tells the videos apart (a trained checkpoint: ``--checkpoint``) measures the
accuracy effect. Videos are generated as in ``bench/compare_mmaction2.py`` unless ``--video``
is given.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import x3d  # noqa: E402
from compare_mmaction2 import random_checkpoint, write_videos  # noqa: E402
from jobs.machine import cpu_model, load_average_text as load_average  # noqa: E402
from worker.model_runner import ModelRunner  # noqa: E402
from worker.spec import ModelSpec  # noqa: E402
PRECISIONS = ("fp32", "bf16")  # x3d.predict.PRECISIONS less tf32, which is fp32 on a CPU


def cpu_bf16_flags() -> str:
    """The CPU features that make bf16 native (without them oneDNN emulates it in fp32 units)."""
    try:
        flags = set(next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")).split())
    except (OSError, StopIteration):
        return "unknown"
    have = [f for f in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if f in flags]
    return ", ".join(have) or "none of avx2/avx512f/avx512_bf16/amx_bf16"


def machine(device: torch.device) -> list[str]:
    lines = [
        f"date:      {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"cpu:       {cpu_model()}, {os.cpu_count()} logical cores ({platform.machine()}); bf16-relevant flags: {cpu_bf16_flags()}",
    ]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(f"gpu:       {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}, "
                     f"bf16 supported: {torch.cuda.is_bf16_supported()}")
    lines.append(f"torch:     {torch.__version__}, threads={torch.get_num_threads()}, device={device}")
    lines.append(f"loadavg:   {load_average()} (before)")
    return lines


def recentre_head(runners: dict[str, ModelRunner], views: list[np.ndarray], logit_std: float) -> None:
    """Centre fc2 on the clips' mean fp32 feature and scale it to ``logit_std``, in every runner."""
    ref = runners["fp32"]
    hidden: list[torch.Tensor] = []
    hook = ref.model.cls_head.fc2.register_forward_hook(lambda mod, inp, out: hidden.append(inp[0].float().cpu()))
    for v in views:
        ref.score([v])
    hook.remove()
    feats = torch.cat(hidden)
    centred = feats - feats.mean(0)
    with torch.no_grad():
        weight = ref.model.cls_head.fc2.weight.detach().float().cpu()
        weight = weight * (logit_std / float((centred @ weight.T).std().clamp_min(1e-12)))
        bias = -weight @ feats.mean(0)
        for runner in runners.values():
            fc2 = runner.model.cls_head.fc2
            fc2.weight.copy_(weight.to(fc2.weight))
            fc2.bias.copy_(bias.to(fc2.bias))


def separation(ref: np.ndarray, low: np.ndarray) -> float:
    """Std over videos of the centred fp32 log fused scores, over the std of their bf16 change."""
    def centred(p: np.ndarray) -> np.ndarray:
        logp = np.log(np.clip(p.astype(np.float64), 1e-30, None))
        return logp - logp.mean(1, keepdims=True)

    a, b = centred(ref), centred(low)
    spread = float(a.std(0).mean()) if len(a) > 1 else float("nan")
    return spread / max(float((a - b).std()), 1e-30)


def time_score(runner: ModelRunner, views: np.ndarray) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    probs = runner.score([views]).probs
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    return probs[0], time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="x3d_s", help="preset (default: x3d_s)")
    parser.add_argument("--checkpoint", help="checkpoint path or URL (default: random weights)")
    parser.add_argument("--views", type=int, default=30, choices=[1, 3, 10, 30], help="views per video (default: 30)")
    parser.add_argument("--videos", type=int, default=3, help="generated videos when no --video is given (default: 3)")
    parser.add_argument("--video", action="append", default=[], help="a video file to use (repeatable)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    parser.add_argument("--batch-size", type=int, help="clips per forward (default: all views of a video)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes over the videos per precision (default: 1)")
    parser.add_argument("--head", choices=["asis", "recentre"], default="asis",
                        help="classifier: as loaded (default), or re-centred on the clips' fp32 features (see above)")
    parser.add_argument("--logit-std", type=float, default=3.0, help="per-view logit std after --head recentre (default: 3)")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = x3d.get_preset(args.model)

    with tempfile.TemporaryDirectory(prefix="x3d-precision-") as tmp:
        if args.video:
            paths = [Path(v) for v in args.video]
        else:
            paths = [p for p, _ in write_videos(Path(tmp), args.videos)]
        checkpoint = args.checkpoint or str(random_checkpoint(args.model, Path(tmp) / f"{args.model}_random.pth"))
        model = x3d.load_model(args.model, checkpoint=checkpoint)
        state = model.state_dict()
        runners = {
            p: ModelRunner(ModelSpec(preset, args.views, precision=p), state, device=str(device), batch_size=args.batch_size)
            for p in PRECISIONS
        }
        for line in machine(device):
            print(line)
        head = args.head
        weights = "checkpoint " + args.checkpoint if args.checkpoint else "random weights (compare_mmaction2.random_checkpoint, seed 0)"
        if head == "recentre":
            weights += f", head re-centred on these clips, logit std {args.logit_std:g}"
        print(f"settings:  {args.model}, {args.views} views, {len(paths)} video(s), batch {args.batch_size or 'all views'}, "
              f"channels_last={runners['fp32'].channels_last}, {weights}")

        views = [x3d.prepare_views(str(p), preset, args.views).views for p in paths]
        clips = sum(v.shape[0] for v in views)
        if head == "recentre":
            recentre_head(runners, views, args.logit_std)
        for runner in runners.values():  # warm-up: first-call allocations and kernel selection
            time_score(runner, views[0])
        probs: dict[str, list[np.ndarray]] = {p: [] for p in PRECISIONS}
        seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for rep in range(args.repeats):
            for v in views:  # precisions alternate video by video, so a load change hits both alike
                for p in PRECISIONS:
                    out, dt = time_score(runners[p], v)
                    seconds[p].append(dt)
                    if rep == 0:
                        probs[p].append(out)

    ref, low = np.stack(probs["fp32"]), np.stack(probs["bf16"])
    delta = np.abs(ref - low)
    top1 = int((ref.argmax(1) == low.argmax(1)).sum())
    top5 = [len(set(np.argsort(-a)[:5]) & set(np.argsort(-b)[:5])) / 5 for a, b in zip(ref, low)]
    print()
    print("| precision | clips/s | s/video (median) | max abs dprob | mean abs dprob | mean per-video max abs dprob | top-1 agree | top-5 overlap |")
    print("|-----------|---------|------------------|---------------|----------------|------------------------------|-------------|---------------|")
    for p in PRECISIONS:
        rate = clips * args.repeats / sum(seconds[p])
        cells = ["reference"] + [""] * 4 if p == "fp32" else [
            f"{delta.max():.2e}", f"{delta.mean():.2e}", f"{delta.max(1).mean():.2e}", f"{top1}/{len(ref)}", f"{statistics.mean(top5):.2f}"
        ]
        print(f"| {p} | {rate:.2f} | {statistics.median(seconds[p]):.2f} | " + " | ".join(cells) + " |")
    top1_prob = ref.max(1)
    print()
    print(f"fp32 fused top-1 prob: mean {top1_prob.mean():.3f} (min {top1_prob.min():.3f}, max {top1_prob.max():.3f}); "
          f"{len(set(ref.argmax(1).tolist()))} distinct top-1 classes over {len(ref)} videos")
    sep = separation(ref, low)
    print(f"separation: {sep:.1f} = spread of the fp32 fused log-scores between videos / their change "
          "under bf16 (well above 10: the model tells these videos apart far beyond bf16 rounding; near 1: "
          "it barely tells them apart at all, so any rounding reorders classes)")
    if not sep > 10:
        print("WARNING: these weights do not tell the videos apart well beyond bf16 rounding: the |dprob| and "
              "top-1/top-5 numbers above say nothing about the accuracy effect on a trained checkpoint")
    print()
    print(f"bf16 / fp32 speed: {sum(seconds['fp32']) / sum(seconds['bf16']):.2f}x; loadavg {load_average()} (after)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
