#!/usr/bin/env python
"""The model half's checks on a CUDA device, and CPU-vs-GPU probabilities, as a plain script.

    python bench/cuda_checks.py                       # on a GPU box: torch and numpy only
    python bench/cuda_checks.py --device cpu --models x3d_tiny --views 3     # the CPU dry run

The GPU image has no pytest, PyAV or decord, so ``tests/worker/test_model_runner_cuda.py``
cannot run there; this script checks the same things on payloads of the decode task's shape
(random frames of a 340x256 video resized and cut to the crops' box, and a clip index into
them), with seeded random weights:

1. probabilities: each precision and layout on the device against the CPU fp32 runner (the
   reference): max abs difference of the fused probabilities and of the logits, top-1 agreement.
   fp32 (TF32 off) must stay under ``--fp32-tol``; tf32 and bf16 are reported.
2. the runner on the device: whole-call and chunked forwards, the gather bit-identical to
   ``x3d.views.views_from_frames``, the conv input's strides in each layout, a call above the
   32-bit index cap split into forwards (X3D-M), two calls from two threads at once giving each
   its own results, and ``torch.compile``.

One Markdown report on stdout; exit status 1 when a check failed (each is tried; a failure is
a line, not the end).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import x3d  # noqa: E402
from worker.spec import ModelSpec  # noqa: E402
from worker.model_runner import ModelRunner  # noqa: E402
from x3d.protocol import gather_views, resized_size  # noqa: E402
from x3d.views import trim_to_crops, views_from_frames  # noqa: E402

SOURCE_HW = (256, 340)


def payloads_for(spec: ModelSpec, videos: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Decode-task payloads: distinct frames cut to the crops' box and the clip index; every
    other video has fewer frames than clips x length (clips overlap, as in short videos)."""
    proto = spec.test_protocol()
    plan = proto.view_plan(spec.views)
    h, w = resized_size(*SOURCE_HW, proto.resize_short)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(videos):
        n = plan.num_clips * proto.clip_len if i % 2 == 0 else max(2, proto.clip_len // 2 + i)
        frames = trim_to_crops(rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8), plan)
        inverse = np.sort(rng.integers(0, n, size=(plan.num_clips, proto.clip_len)), axis=1)
        out.append((frames, inverse))
    return out


def weights(preset: x3d.Preset) -> dict:
    """Seeded random weights, the classifier scaled up: random init gives logits of ~0.1, whose
    softmax is flat and hides any difference; a trained model's logits span several units."""
    torch.manual_seed(0)
    state = x3d.build_model(preset).state_dict()
    last = [k for k, v in state.items() if v.ndim == 2][-1]
    state[last] = state[last] * 50
    return state


def logits_of(runner: ModelRunner, payloads: list) -> np.ndarray:
    return runner.logits(runner.prepare(payloads)).numpy()


class Report:
    def __init__(self, json_path: str | None):
        self.failed = 0
        self.json_path = json_path

    def check(self, name: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            detail = fn() or ""
            ok = True
        except Exception as exc:  # a failed check is a line; the others still run
            ok, detail = False, f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
            traceback.print_exc(file=sys.stderr)
        self.failed += not ok
        print(f"| {name} | {'ok' if ok else 'FAILED'} | {detail} | {time.perf_counter() - t0:.1f} |", flush=True)
        self.record({"check": name, "ok": ok, "detail": detail})

    def record(self, row: dict) -> None:
        if self.json_path:
            with open(self.json_path, "a") as f:
                f.write(json.dumps(row) + "\n")


def parity(args, report: Report) -> None:
    print("\n## Probabilities against the CPU fp32 reference (seeded random weights)\n")
    print(f"{args.videos} videos x {args.views} views of random frames; reference: ModelRunner on the CPU, fp32.\n")
    print("| model | precision | layout | max abs diff probs | max abs diff logits | max abs logit | top-1 agree | ms |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        preset = x3d.get_preset(model)
        state = weights(preset)
        spec = ModelSpec(preset, args.views)
        batch = payloads_for(spec, args.videos)
        ref_runner = ModelRunner(spec, state, device="cpu")
        ref_probs = ref_runner.score(batch).probs
        ref_logits = logits_of(ref_runner, batch)
        for precision, layout in (("fp32", "ncdhw"), ("fp32", "channels_last_3d"), ("tf32", "ncdhw"), ("bf16", "ncdhw"),
                                  ("bf16", "channels_last_3d")):
            row = {"model": model, "precision": precision, "layout": layout}
            t0 = time.perf_counter()
            try:
                runner = ModelRunner(ModelSpec(preset, args.views, precision=precision), state, device=args.device,
                                     channels_last=layout == "channels_last_3d")
                probs = runner.score(batch).probs
                logits = logits_of(runner, batch)
                row.update(probs=float(max(np.abs(a - b).max() for a, b in zip(ref_probs, probs))),
                           logits=float(np.abs(ref_logits - logits).max()), scale=float(np.abs(ref_logits).max()),
                           top1=sum(int(a.argmax() == b.argmax()) for a, b in zip(ref_probs, probs)))
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
                traceback.print_exc(file=sys.stderr)
            ms = (time.perf_counter() - t0) * 1000
            report.record({"parity": row})
            if "error" in row:
                report.failed += 1
                print(f"| {model} | {precision} | {layout} | FAILED: {row['error']} | | | | {ms:.0f} |", flush=True)
                continue
            bad = precision == "fp32" and row["probs"] > args.fp32_tol
            report.failed += bad
            print(f"| {model} | {precision} | {layout} | {row['probs']:.2e}{' FAILED (> tol)' if bad else ''} | "
                  f"{row['logits']:.2e} | {row['scale']:.2e} | {row['top1']}/{len(batch)} | {ms:.0f} |", flush=True)


def runner_checks(args, report: Report) -> None:
    print("\n## The runner on the device\n")
    print("| check | result | detail | s |")
    print("|---|---|---|---|")
    device = args.device
    preset = x3d.get_preset(args.models.split(",")[0])
    spec = ModelSpec(preset, args.views)
    state = weights(preset)
    batch = payloads_for(spec, args.videos, seed=1)
    ref = ModelRunner(spec, state, device="cpu").score(batch).probs

    def same_as_cpu(**options):
        def run():
            runner = ModelRunner(spec, state, device=device, **options)
            for _ in range(2):  # the second call reuses the cached constants and tuned kernels
                scored = runner.score(batch)
                got, ms = scored.probs, scored.shares_ms
            diff = max(np.abs(a - b).max() for a, b in zip(ref, got))
            assert len(got) == len(ref) and all(m >= 0 for m in ms)
            assert diff < args.fp32_tol, f"max abs diff {diff:.2e}"
            return f"max abs diff {diff:.2e}, batch_size {runner.batch_size}"
        return run

    report.check("scores = CPU path, whole call, ncdhw", same_as_cpu(channels_last=False))
    report.check("scores = CPU path, channels_last_3d", same_as_cpu(channels_last=True))
    report.check("scores = CPU path, 7 clips per forward", same_as_cpu(batch_size=7))

    def gather():
        plan = spec.test_protocol().view_plan(args.views)
        for frames, inverse in batch:
            on = gather_views(torch.from_numpy(frames).to(device), torch.from_numpy(inverse).to(device), plan).cpu().numpy()
            assert np.array_equal(on, views_from_frames(frames, inverse, plan))
        return f"{len(batch)} videos bit-identical"

    report.check("gather on the device = views_from_frames", gather)

    def strides():
        seen = {}
        for layout in ("ncdhw", "channels_last_3d"):
            runner = ModelRunner(spec, state, device=device, channels_last=layout == "channels_last_3d")
            conv = next(m for m in runner.model.modules() if isinstance(m, torch.nn.Conv3d))
            got = []
            handle = conv.register_forward_pre_hook(lambda m, inp: got.append(inp[0]))
            runner.score(batch[:1])
            handle.remove()
            fmt = torch.channels_last_3d if layout == "channels_last_3d" else torch.contiguous_format
            assert got and got[0].is_contiguous(memory_format=fmt), f"{layout}: strides {got[0].stride()}"
            seen[layout] = got[0].stride()
        return "; ".join(f"{k} {v}" for k, v in seen.items())

    report.check("conv input in the layout asked", strides)

    def concurrent():
        runner = ModelRunner(spec, state, device=device)
        halves = [batch[: len(batch) // 2], batch[len(batch) // 2 :]]
        alone = [runner.score(h).probs for h in halves]
        results: list = [None, None]

        def call(i):
            results[i] = runner.score(halves[i]).probs

        for _ in range(3):
            threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for i in range(2):
                diff = max(np.abs(a - b).max() for a, b in zip(alone[i], results[i]))
                assert diff < 1e-5, f"call {i}: {diff:.2e} from its own scores alone"
        return "two threads x 3 rounds, each call its own scores"

    report.check("two calls at once", concurrent)

    def bounded():
        """A call's device memory follows its forwards, not its size (docs/scaling.md): the
        peak of a 16-forward call against that of a 2-forward one, 8 clips per forward."""
        if not device.startswith("cuda"):
            return "n/a on the CPU (tests/worker/test_model_runner_chunks.py watches every clip tensor there)"
        runner = ModelRunner(spec, state, device=device, batch_size=8)
        clips = runner.plan.views  # per video

        def peak(videos: list) -> int:
            runner.score(videos)  # tuned kernels and cached constants first
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            runner.score(videos)
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device) - base

        small = peak([batch[0]] * max(1, 16 // clips))
        large = peak([batch[0]] * max(1, 128 // clips))
        assert large <= 1.5 * small, f"{large / 2**20:.0f} MB for 128 clips against {small / 2**20:.0f} MB for 16"
        return f"peak {small / 2**20:.0f} MB for a call of 16 clips, {large / 2**20:.0f} MB for 128 (8 per forward)"

    report.check("a call's device memory does not grow with its size", bounded)

    if args.cap_model not in ("", "none"):
        def over_cap():
            big = x3d.get_preset(args.cap_model)
            cap = x3d.predict.max_clips_per_forward(big)
            big_spec = ModelSpec(big, 10)
            payload = payloads_for(big_spec, 1)[0]
            n = cap // 10 + 1  # videos: just over the cap
            runner = ModelRunner(big_spec, weights(big), device=device)
            probs = runner.score([payload] * n).probs
            assert len(probs) == n and all(np.isfinite(p).all() for p in probs)
            spread = max(np.abs(p - probs[0]).max() for p in probs)
            assert spread < 1e-5, f"the same video scored {spread:.2e} apart across forwards"
            detail = f"{n * 10} clips as {-(-n * 10 // runner.batch_size)} forwards (cap {cap})"
            if args.uncapped:  # what the cap avoids: one forward over it (reported, not a failure)
                runner.batch_size = n * 10
                try:
                    runner.score([payload] * n)
                    detail += "; one uncapped forward ran"
                except Exception as exc:
                    detail += f"; one uncapped forward: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}"
            return detail

        report.check(f"{args.cap_model} call over the index cap", over_cap)

    if args.compile:
        report.check("scores = CPU path, torch.compile", same_as_cpu(compile=True))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", default="x3d_s,x3d_m", help="parity models; the first also runs the runner checks")
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--views", type=int, default=3, choices=[1, 3, 10, 30])
    ap.add_argument("--fp32-tol", type=float, default=1e-4)
    ap.add_argument("--cap-model", default="x3d_m", help="the model whose over-cap call is checked ('none' to skip)")
    ap.add_argument("--uncapped", action="store_true", help="also try one forward over the cap and report what happens")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--json", help="append one JSON line per check and parity row")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("cuda_checks.py: no CUDA device here; use --device cpu for a dry run", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    print(f"# CUDA path checks: {name}; torch {torch.__version__}")
    report = Report(args.json)
    parity(args, report)
    runner_checks(args, report)
    print(f"\n{report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
