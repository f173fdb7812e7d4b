"""The GPU path of the model half (``ModelRunner.prepare`` / ``compute`` on CUDA): frames copied on a
side stream from pinned memory, gathered, cropped and normalised on the device, forwards chunked.
(The GPU image has no pytest or PyAV: ``bench/cuda_checks.py`` runs these checks there.)

Needs a CUDA device; skipped without one. The oracle is the CPU path on the same payloads
(itself bit-identical to ``x3d.prepare_views``'s views: test_model_runner_frames.py): float
noise only, in both memory layouts, with and without ``torch.compile``, in whole-call and
chunked forwards.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

import x3d
from tests import presets
from tests.cluster.evalset import tinted_frames
from tests.videos import write_video
from worker.decode_task import decode_item
from worker.spec import ModelSpec
from worker.items import VideoItem
from worker.model_runner import ModelRunner

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

VIEWS = 30


@pytest.fixture(scope="module")
def payloads(tmp_path_factory) -> list:
    folder = tmp_path_factory.mktemp("cuda")
    out = []
    for i, (n, h, w) in enumerate([(40, 48, 64), (9, 64, 80), (75, 56, 76), (30, 40, 56)]):
        path = write_video(folder / f"v{i}.mp4", frames=tinted_frames(i, n, h, w))
        result, payload = decode_item(VideoItem(path.name, str(path), None), ModelSpec(presets.X3D_TEST, VIEWS))
        assert result.error is None
        out.append(payload)
    return out


@pytest.mark.parametrize("options", [{}, {"channels_last": True}, {"batch_size": 31}, {"compile": True}])
def test_gpu_scores_equal_the_cpu_path(payloads, options):
    spec = ModelSpec(presets.X3D_TEST, VIEWS)
    state = presets.random_model(0).state_dict()
    cpu = ModelRunner(spec, state, device="cpu").score(payloads).probs
    gpu_runner = ModelRunner(spec, state, device="cuda", **options)
    assert gpu_runner.describe()["device"].startswith("cuda")
    mixed = [payloads[0], x3d.views.views_from_frames(*payloads[1], spec.test_protocol().view_plan(VIEWS)), *payloads[2:]]
    for batch in (payloads, mixed):
        scored = gpu_runner.score(batch)
        gpu, ms = scored.probs, scored.shares_ms
        assert len(gpu) == len(cpu) and all(m >= 0 for m in ms)
        for a, b in zip(cpu, gpu):
            assert b.dtype == np.float32 and np.abs(a - b).max() < 1e-4
            assert a.argmax() == b.argmax()


def test_gpu_gather_is_bit_identical(payloads):
    from x3d.protocol import gather_views

    plan = presets.X3D_TEST.protocol().view_plan(VIEWS)
    for frames, inverse in payloads:
        on_gpu = gather_views(torch.from_numpy(frames).cuda(), torch.from_numpy(inverse).cuda(), plan).cpu().numpy()
        assert np.array_equal(on_gpu, x3d.views.views_from_frames(frames, inverse, plan))
