"""The model actor's half on shipped frames: the same scores, bit for bit, as on today's views.

The decode task ships each distinct resized frame once (``worker.decode_task.decode_item``);
``worker.model_runner.ModelRunner`` gathers and crops them on its device. Pure indexing, so the
probabilities must be *equal* (not close) to those from ``x3d.prepare_views``'s views, whatever
mix of payloads one call carries. Real encoded videos, a real (random-weight) X3D on CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import x3d
from tests import presets
from tests.cluster.evalset import tinted_frames
from tests.videos import write_video
from worker.decode_task import decode_item
from worker.spec import ModelSpec
from worker.items import VideoItem
from worker.model_runner import ModelRunner

VIEWS = 30


def test_frames_and_views_give_identical_scores(tmp_path: Path) -> None:
    # tinted as in the evaluate tests, so the random model tells them apart; one shorter than a clip
    paths = [write_video(tmp_path / f"v{i}.mp4", frames=tinted_frames(i, n, h, w))
             for i, (n, h, w) in enumerate([(40, 48, 64), (9, 64, 80), (75, 56, 76)])]
    spec = ModelSpec(presets.X3D_TEST, VIEWS)
    state = presets.random_model(0).state_dict()
    runner = ModelRunner(spec, state, device="cpu")  # no threads=: it would set torch's for the whole session

    views = [x3d.prepare_views(str(p), presets.X3D_TEST, VIEWS).views for p in paths]
    frames = []
    for p in paths:
        result, payload = decode_item(VideoItem(p.name, str(p), None), spec)
        assert result.error is None and result.num_views == VIEWS
        frames.append(payload)
    from_views = runner.score(views).probs
    from_frames = runner.score(frames).probs
    mixed = runner.score([frames[0], views[1], frames[2]]).probs
    for a, b, c in zip(from_views, from_frames, mixed):
        assert a.dtype == np.float32 and a.shape == (len(presets.X3D_TEST.classes),)
        assert np.array_equal(a, b) and np.array_equal(a, c)
    assert max(np.abs(from_views[0] - from_views[i]).max() for i in (1, 2)) > 1e-4  # the videos differ
    assert sum(f.nbytes + i.nbytes for f, i in frames) < sum(v.nbytes for v in views)
