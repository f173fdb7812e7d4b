"""A model call's device memory is bounded by its forwards, not by its size.

``ModelRunner`` makes a call's input one forward at a time (the videos' frames copied, their
views gathered and cropped, normalised), so a call of many clips never holds more than a
forward's clips in any tensor of clips, whatever its size. Seen here on the CPU path, which
runs the same code as CUDA's but for the streams: every tensor the call makes is observed
(``torch.overrides.TorchFunctionMode``), and the scores are the very bytes of one pass over the
whole call's views (``x3d.predict_clips`` on them, cut into the same forwards).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

import x3d
from tests import presets
from worker.spec import ModelSpec
from worker.model_runner import ModelRunner, plan_forwards
from x3d.protocol import fuse_views

VIEWS = 3
FORWARD = 4  # clips per forward


class ClipTensors(TorchFunctionMode):
    """The most clips any uint8 clip tensor ``(N, T, S, S, 3)`` and any normalised input
    ``(N, 3, T, S, S)`` held among the tensors torch functions returned while it was on."""

    def __init__(self, clip_len: int, crop: int):
        super().__init__()
        self.uint8 = (clip_len, crop, crop, 3)
        self.normalised = (3, clip_len, crop, crop)
        self.most = {"uint8": 0, "normalised": 0}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.ndim == 5:
                if t.dtype == torch.uint8 and tuple(t.shape[1:]) == self.uint8:
                    self.most["uint8"] = max(self.most["uint8"], t.shape[0])
                elif t.is_floating_point() and tuple(t.shape[1:]) == self.normalised:
                    self.most["normalised"] = max(self.most["normalised"], t.shape[0])
        return out


def _payloads(spec: ModelSpec, videos: int) -> list:
    """Decode-task payloads (distinct frames, clip index), every third one as whole views."""
    proto = spec.test_protocol()
    plan = proto.view_plan(spec.views)
    h, w = x3d.protocol.resized_size(48, 64, proto.resize_short)
    rng = np.random.default_rng(7)
    out = []
    for i in range(videos):
        n = 5 + 2 * i
        frames = x3d.views.trim_to_crops(rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8), plan)
        inverse = np.sort(rng.integers(0, n, size=(plan.num_clips, proto.clip_len)), axis=1)
        out.append(x3d.views.views_from_frames(frames, inverse, plan) if i % 3 == 2 else (frames, inverse))
    return out


def test_forwards_cut_the_call_as_a_whole_tensor_would():
    assert plan_forwards([3, 3, 3], 4) == [[(0, 0, 3), (1, 0, 1)], [(1, 1, 3), (2, 0, 2)], [(2, 2, 3)]]
    assert plan_forwards([10], 4) == [[(0, 0, 4)], [(0, 4, 8)], [(0, 8, 10)]]
    assert plan_forwards([2, 2], 4) == [[(0, 0, 2), (1, 0, 2)]]
    assert plan_forwards([], 4) == []


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_large_call_holds_one_forward_of_clips_and_scores_as_one_pass(channels_last):
    spec = ModelSpec(presets.X3D_TEST, VIEWS)
    proto = spec.test_protocol()
    plan = proto.view_plan(VIEWS)
    state = presets.random_model(0).state_dict()
    runner = ModelRunner(spec, state, device="cpu", batch_size=FORWARD, channels_last=channels_last)
    payloads = _payloads(spec, 9)  # 27 clips: 7 forwards, videos cut between them
    seen = ClipTensors(proto.clip_len, proto.crop_size)
    sizes: list[int] = []
    hook = runner.model.register_forward_pre_hook(lambda module, inputs: sizes.append(inputs[0].shape[0]))
    try:
        with seen:
            chunked = runner.score(payloads).probs
    finally:
        hook.remove()
    assert sizes == [4, 4, 4, 4, 4, 4, 3]
    assert seen.most == {"uint8": FORWARD, "normalised": FORWARD}  # not the call's 27

    # one pass: the whole call's views in one tensor, normalised per forward by x3d.predict_clips
    views = [p if isinstance(p, np.ndarray) else x3d.views.views_from_frames(*p, plan) for p in payloads]
    whole = ClipTensors(proto.clip_len, proto.crop_size)
    with whole:
        logits = x3d.predict_clips(runner.model, np.concatenate(views), proto, FORWARD, channels_last=channels_last)
    assert whole.most["uint8"] == 27  # the observer sees a call-sized tensor where there is one
    offsets = np.cumsum([0] + [len(v) for v in views])
    for video, probs in enumerate(chunked):
        expected = fuse_views(logits[offsets[video] : offsets[video + 1]]).numpy().astype(np.float32)
        assert np.array_equal(probs, expected)
    assert max(np.abs(chunked[0] - p).max() for p in chunked[1:]) > 1e-4  # the videos differ


def test_features_come_from_the_same_bounded_forwards():
    spec = ModelSpec(presets.X3D_TEST, VIEWS)
    proto = spec.test_protocol()
    state = presets.random_model(0).state_dict()
    payloads = _payloads(spec, 5)  # 15 clips
    small = ModelRunner(spec, state, device="cpu", batch_size=FORWARD, feature_kind="backbone")
    seen = ClipTensors(proto.clip_len, proto.crop_size)
    with seen:
        scored = small.score(payloads)
    probs, vectors = scored.probs, scored.embeddings
    assert seen.most == {"uint8": FORWARD, "normalised": FORWARD}
    plain = ModelRunner(spec, state, device="cpu", batch_size=FORWARD).score(payloads).probs
    assert all(np.array_equal(a, b) for a, b in zip(probs, plain))
    whole_vectors = ModelRunner(spec, state, device="cpu", batch_size=15, feature_kind="backbone").score(payloads).embeddings
    assert len(vectors) == 5 and all(v.dtype == np.float32 for v in vectors)
    for a, b in zip(vectors, whole_vectors):  # float noise of other batch shapes only
        assert np.abs(a - b).max() < 1e-5
