"""The model actor: Ray's callable-class shape around one ``worker.model_runner.ModelRunner``.

``__init__`` loads the model once, on whatever device Ray granted the actor (a GPU when it was
given ``num_gpus``); ``score`` takes a batch of videos as the decode units streamed them, by
reference (groups of ``(DecodeResult, payload)`` pairs, ``worker.decode_task.decode_unit``),
scores those that decoded and returns every video's result with its fused probabilities (and,
when the runner has a feature kind, its embedding, from the same forward): the reply is how the
driver learns what a group held, since it never opens one. The pipeline (``cluster.pipeline``) declares the resources,
starts, watches and replaces these actors.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np
import ray
import torch

from cluster.config import ActorReply
from worker.cpus import owned_cpus
from worker.model_runner import ModelRunner
from worker.spec import DecodeResult, ModelSpec, Payload
from worker.stages import NULL_TIMER, maxrss_mb

__all__ = ["ModelActor"]


class ModelActor:
    """Ray actor body: one ModelRunner, pinned to the device Ray granted."""

    def __init__(self, spec: ModelSpec, state_dict: Mapping[str, torch.Tensor], threads: int, batch_size: int | None,
                 options: Mapping[str, Any] | None = None):
        # The driver keeps the state dict's ref alive for the whole run, so a replacement actor
        # can resolve it again; Ray's warning about this at start-up is expected.
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        # The sizing's thread count (from Ray's view of the node), capped by the CPUs this
        # process may really use (affinity, cgroup quota): more threads than CPUs is the slow case.
        threads = owned_cpus(assigned=threads)
        self.runner = ModelRunner(spec, state_dict, device=device, threads=threads, batch_size=batch_size, **(options or {}))

    def describe(self) -> dict[str, Any]:
        info = self.runner.describe()
        info["node"] = ray.get_runtime_context().get_node_id()
        info["gpu_ids"] = [str(g) for g in ray.get_gpu_ids()]  # what Ray granted, CUDA or not
        return info

    def score(self, timed: bool, *groups: list[tuple[DecodeResult, Payload | None]]) -> ActorReply:
        """Every video of the groups, in order, with its decode's result and, where it decoded,
        its probabilities and forward time; when ``timed``, the call's record for the benchmark
        (start and end, stages, memory, accelerator use)."""
        pairs = [pair for group in groups for pair in group]
        results = [result for result, _ in pairs]
        good = [payload for result, payload in pairs if result.error is None]
        timer = self.runner.timer() if timed else NULL_TIMER
        timer.skip()
        # The batch's clock starts at the timer's own mark: a thread switch (Ray's threads take
        # the GIL around calls) between two separate readings would show as unexplained time.
        started_at, start = time.time(), (timer.mark if timed else time.perf_counter())
        scores = self.runner.score(good, timer) if good else None
        probs = np.stack(scores.probs) if scores else np.zeros((0, 0), np.float32)
        ms = np.asarray(scores.shares_ms if scores else [], np.float64)
        embeddings = np.stack(scores.embeddings) if scores and scores.embeddings else None
        reply = ActorReply(results, probs, ms, self.runner.name, embeddings)
        if not timed:
            return reply
        # Handing the scores over is the end of the forward stage (the logits' way back), and the
        # batch ends at that mark, for the same reason it starts at one.
        timer.charge("forward")
        wall = timer.mark - start
        cuda = self.runner.device.type == "cuda"
        reply.record = {
            "t_start": started_at,
            "t_end": started_at + wall,
            "actor_wall_s": wall,
            "stages_s": timer.stages,
            "actor_rss_mb": maxrss_mb(),
            "gpu_util": _gpu_util(self.runner.device) if cuda else None,
            "gpu_peak_mb": torch.cuda.max_memory_allocated(self.runner.device) / 2**20 if cuda else None,
        }
        return reply


def _gpu_util(device: torch.device) -> float | None:
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # no NVML in this image: utilisation unknown, not an error
        return None
