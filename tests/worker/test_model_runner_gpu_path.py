"""What the GPU path of ``ModelRunner`` promises, checked where it can be: on the CPU.

fp32 turns TF32 off (only ``tf32`` allows it), the memory layout asked is the one the first
conv sees, clips per forward stay under 32-bit indexing (computed from the preset's largest
activation on the meta device) and a call is split into forwards accordingly, and a call is
prepared outside the lock its compute step holds, so with two calls in flight the second is
prepared while the first computes, each getting its own results.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import x3d
from tests import presets
from worker.spec import ModelSpec
from worker.model_runner import ModelRunner
from x3d.predict import MAX_TENSOR_ELEMENTS, max_clips_per_forward

VIEWS = 3


def _payloads(spec: ModelSpec, videos: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Decode-task payloads (distinct frames, clip index) of random frames."""
    proto = spec.test_protocol()
    plan = proto.view_plan(spec.views)
    h, w = x3d.protocol.resized_size(48, 64, proto.resize_short)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(videos):
        n = 4 + 3 * i
        frames = x3d.views.trim_to_crops(rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8), plan)
        out.append((frames, np.sort(rng.integers(0, n, size=(plan.num_clips, proto.clip_len)), axis=1)))
    return out


@pytest.fixture(scope="module")
def state() -> dict:
    return presets.random_model(0).state_dict()


def _spec(precision: str = "fp32") -> ModelSpec:
    return ModelSpec(presets.X3D_TEST, VIEWS, precision=precision)


@pytest.mark.parametrize("precision, allowed", [("fp32", False), ("bf16", False), ("tf32", True)])
def test_tf32_only_for_the_tf32_precision(state, precision, allowed):
    torch.backends.cudnn.allow_tf32 = not allowed  # the opposite, so the runner must set it
    torch.backends.cuda.matmul.allow_tf32 = not allowed
    try:
        runner = ModelRunner(_spec(precision), state, device="cpu")
        assert torch.backends.cudnn.allow_tf32 is allowed and torch.backends.cuda.matmul.allow_tf32 is allowed
        assert runner.describe()["precision"] == precision
    finally:
        x3d.predict.set_tf32_for("fp32")


def test_tf32_scores_as_fp32_on_a_cpu(state):
    batch = _payloads(_spec(), 2)
    fp32 = ModelRunner(_spec("fp32"), state, device="cpu").score(batch).probs
    tf32 = ModelRunner(_spec("tf32"), state, device="cpu").score(batch).probs
    assert all(np.array_equal(a, b) for a, b in zip(fp32, tf32))


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_first_conv_sees_the_layout_asked(state, channels_last):
    """``normalize``'s permute alone leaves channels_last_3d strides; NCDHW must be made."""
    runner = ModelRunner(_spec(), state, device="cpu", channels_last=channels_last)
    conv = next(m for m in runner.model.modules() if isinstance(m, torch.nn.Conv3d))
    seen = []
    handle = conv.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    try:
        runner.score(_payloads(_spec(), 2))
    finally:
        handle.remove()
    wanted = torch.channels_last_3d if channels_last else torch.contiguous_format
    assert seen and all(x.is_contiguous(memory_format=wanted) for x in seen), [x.stride() for x in seen]
    if not channels_last:
        assert not seen[0].is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("model, first_expansion", [("x3d_s", (54, 13, 91, 91)), ("x3d_m", (54, 16, 128, 128))])
def test_clips_per_forward_stay_under_32_bit_indexing(model, first_expansion):
    """X3D's largest activation is stage 1's expanded bottleneck: 54 channels at half the crop."""
    cap = max_clips_per_forward(model)
    per_clip = int(np.prod(first_expansion))
    assert cap == MAX_TENSOR_ELEMENTS // per_clip
    assert cap * per_clip <= MAX_TENSOR_ELEMENTS < (cap + 1) * per_clip
    assert (model, cap) in {("x3d_s", 369), ("x3d_m", 151)}


def test_a_call_is_split_into_forwards_of_the_cap(state):
    cap = max_clips_per_forward(presets.X3D_TEST)
    assert ModelRunner(_spec(), state, device="cpu", batch_size=10 * cap).batch_size == cap
    runner = ModelRunner(_spec(), state, device="cpu", batch_size=4)
    sizes = []
    handle = runner.model.register_forward_pre_hook(lambda module, inputs: sizes.append(inputs[0].shape[0]))
    batch = _payloads(_spec(), 3)  # 3 videos x 3 views = 9 clips
    try:
        chunked = runner.score(batch).probs
    finally:
        handle.remove()
    assert sizes == [4, 4, 1]
    whole = ModelRunner(_spec(), state, device="cpu", batch_size=9).score(batch).probs
    assert all(np.abs(a - b).max() < 1e-5 for a, b in zip(whole, chunked))  # float noise of other batch shapes


class LoggedRunner(ModelRunner):
    """The real runner, with its steps logged; the first compute waits until another call has
    been prepared (or 30 s), which it can only be if preparing does not take the lock."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.log: list[tuple[str, str]] = []
        self.second_prepared = threading.Event()

    def prepare(self, payloads, timer=None):
        call = threading.current_thread().name
        self.log.append((call, "prepare begins"))
        prepared = super().prepare(payloads) if timer is None else super().prepare(payloads, timer)
        self.log.append((call, "prepare ends"))
        if call == "second":
            self.second_prepared.set()
        return prepared

    def _forwards(self, prepared, timer):  # the part of a call that holds the runner's lock
        call = threading.current_thread().name
        self.log.append((call, "compute begins"))
        if call == "first":
            self.second_prepared.wait(30)
        out = super()._forwards(prepared, timer)
        self.log.append((call, "compute ends"))
        return out


def test_the_next_call_is_prepared_while_this_one_computes(state):
    runner = LoggedRunner(_spec(), state, device="cpu")
    calls = {"first": _payloads(_spec(), 2, seed=1), "second": _payloads(_spec(), 3, seed=2)}
    alone = {name: ModelRunner(_spec(), state, device="cpu").score(batch).probs for name, batch in calls.items()}
    results: dict[str, list] = {}

    def call():
        name = threading.current_thread().name
        results[name] = runner.score(calls[name]).probs

    first = threading.Thread(target=call, name="first")
    first.start()
    while ("first", "compute begins") not in runner.log and first.is_alive():
        threading.Event().wait(0.01)
    second = threading.Thread(target=call, name="second")
    second.start()
    first.join(60)
    second.join(60)
    at = {event: i for i, event in enumerate(runner.log)}
    assert at[("second", "prepare ends")] < at[("first", "compute ends")], runner.log  # prepared during the compute
    assert at[("first", "compute ends")] < at[("second", "compute begins")], runner.log  # computes take turns
    for name in calls:  # each call its own scores
        assert len(results[name]) == len(calls[name])
        assert all(np.abs(a - b).max() < 1e-5 for a, b in zip(alone[name], results[name]))
