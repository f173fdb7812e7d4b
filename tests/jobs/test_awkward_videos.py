"""The evaluate job on the awkward files of issue 31, against MMAction2 itself.

One file of each kind (tests/videos.py ``awkward_videos``: open GOPs, MPEG-4 part 2 with
B-frames in MP4 and AVI, a stream-copy cut and an end trim (edit lists), full-range VP9,
rotation, variable frame rate), a narrow X3D-S with random weights built identically on both
sides from MMAction2's packaged config, 30 views, a real local Ray and real Parquet. Every row
must carry MMAction2's top-1 and probabilities, and say how its frames were read; with
``true_frames`` the flagged files are decoded in order and score as the library's
``frames="true"``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow.dataset as ds
import pytest

import x3d
from jobs.datasets import resolve_dataset
from jobs.evaluate import EvaluateConfig, run_evaluate
from tests.cluster.evalset import PROB_TOL
from tests.videos import awkward_videos
from tests.x3d import mmaction_oracle as oracle
from tests.x3d.test_access_order import EXPECTED, UNSTABLE
from tests.x3d.test_parity import LIGHT, MAX_DPROB, _random_checkpoint, _recognizers

pytestmark = [pytest.mark.slow, pytest.mark.parity, pytest.mark.timeout(1200)]

VIEWS = 30


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    yield from oracle.one_torch_thread()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The files, their video list, the checkpoint, and the narrow preset registered for the job."""
    oracle.import_mmaction()
    root = tmp_path_factory.mktemp("awkward_job")
    files = awkward_videos(root / "videos", frames_for=oracle.scene_frames)
    ann = root / "list.txt"
    ann.write_text("".join(f"{path.name} 0\n" for path in files.values()))
    checkpoint = _random_checkpoint(LIGHT, root / "x3d_light_random.pth")
    preset, ours, theirs = _recognizers("x3d_s", "light", checkpoint, [VIEWS])
    x3d.register_preset(replace(preset, name="x3d_s_light_awkward", published=()))
    return files, ann, checkpoint, ours, theirs[VIEWS]


def _run(setup, output, **kw) -> dict[str, dict]:
    files, ann, checkpoint, _, _ = setup
    spec = resolve_dataset(None, data_root=str(files["h264_bframes"].parent), ann_file=str(ann))
    run_evaluate(EvaluateConfig(dataset=spec, model="x3d_s_light_awkward", checkpoint=str(checkpoint), views=VIEWS,
                                output=str(output), shard_size=16, quiet=True, **kw))
    table = ds.dataset(str(output / "predictions"), format="parquet").to_table().to_pylist()
    return {row["video"]: row for row in table}


def test_every_row_has_mmaction2s_scores_and_says_how_it_was_read(setup, ray_local, tmp_path):
    from mmaction.apis import inference_recognizer

    files, _, _, _, recognizer = setup
    rows = _run(setup, tmp_path / "run")
    table = []
    for name, path in files.items():
        row = rows[path.name]
        assert row["error"] is None, row["error"]
        probs = np.asarray(row["probs"], dtype=np.float32)
        for _ in range(4 if name in UNSTABLE else 1):  # decord glitches now and then on it (dmlc/decord#195)
            expected = inference_recognizer(recognizer, str(path)).pred_score.numpy()
            delta = float(np.abs(probs - expected).max())
            if probs.argmax() == expected.argmax() and delta < MAX_DPROB:
                break
        table.append(f"| {name} | {row['frames_read']} | {'same' if row['pred'] == expected.argmax() else 'differs'} | {delta:.2e} |")
        assert row["frames_read"] == ("fast" if EXPECTED[name] is None else "mmaction2"), name
        assert row["pred"] == int(expected.argmax()) and delta < MAX_DPROB, table[-1]
    print("\n| file | frames_read | job top-1 vs MMAction2 | max abs dprob |\n|---|---|---|---:|\n" + "\n".join(table))


def test_true_frames_rows_score_the_frames_decoded_in_order(setup, ray_local, tmp_path):
    files, _, _, model, _ = setup
    rows = _run(setup, tmp_path / "true", true_frames=True)
    for name, path in files.items():
        row = rows[path.name]
        assert row["frames_read"] == ("fast" if EXPECTED[name] is None else "sequential"), name
        expected = x3d.predict_video(model, path, views=VIEWS, frames="true")
        np.testing.assert_allclose(np.asarray(row["probs"]), expected, rtol=0, atol=PROB_TOL, err_msg=name)
