"""Our accuracy functions against MMAction2's own, on random scores with ties and absent classes."""

import numpy as np
import pyarrow as pa
import pytest

from jobs.metrics import mean_class_accuracy, top_k_accuracy, topk_from_scores
from jobs.summary import accuracy_from_table


def _random_case(seed: int, n: int = 200, classes: int = 12):
    rng = np.random.default_rng(seed)
    scores = rng.random((n, classes)).astype(np.float32)
    scores[::7, :3] = 0.5  # ties: the order must follow numpy's argsort like MMAction2's
    labels = rng.integers(0, classes - 2, size=n)  # two classes never occur as truth
    return scores, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_mmaction2(seed):
    mm = pytest.importorskip("mmaction.evaluation.functional")
    scores, labels = _random_case(seed)
    ranked = topk_from_scores(scores, 5)
    ours = [top_k_accuracy(ranked, labels, k) for k in (1, 5)]
    theirs = mm.top_k_accuracy(list(scores), list(labels), (1, 5))
    assert ours == pytest.approx(theirs, abs=1e-12)
    preds = ranked[:, 0]
    assert mean_class_accuracy(preds, labels) == pytest.approx(mm.mean_class_accuracy(list(scores), list(labels)), abs=1e-12)


def test_mean_class_counts_predicted_but_absent_classes():
    # class 2 is predicted but never true: MMAction2 averages a 0 for it.
    assert mean_class_accuracy([0, 1, 2], [0, 1, 1]) == pytest.approx((1.0 + 0.5 + 0.0) / 3)


def test_accuracy_from_table_counts_failures_both_ways():
    table = pa.table(
        {
            "label": pa.array([0, 1, 1, 2], pa.int32()),
            "pred": pa.array([0, 1, None, 0], pa.int32()),
            "topk_classes": pa.array([[0, 1], [1, 0], [], [0, 2]], pa.list_(pa.int32())),
            "error": pa.array([None, None, "broken.mp4: not a readable video", None]),
        }
    )
    acc = accuracy_from_table(table)
    assert (acc["num_videos"], acc["num_ok"], acc["num_failed"]) == (4, 3, 1)
    assert acc["top1_acc"] == pytest.approx(2 / 3)
    assert acc["top5_acc"] == pytest.approx(1.0)
    assert acc["top1_acc_with_failures"] == pytest.approx(2 / 4)
    assert acc["top5_acc_with_failures"] == pytest.approx(3 / 4)
    # over the 3 decoded videos: class 0 1/1, class 1 1/1, class 2 0/1
    assert acc["mean_class_acc"] == pytest.approx(2 / 3)
    # with the failure as a miss: class 0 1/1, class 1 1/2, class 2 0/1
    assert acc["mean_class_acc_with_failures"] == pytest.approx(0.5)
