"""Accuracy exactly as MMAction2 computes it, so our numbers sit beside the model card's.

top-k: a hit when the true label is among the k highest fused scores, ties broken as
numpy's ascending argsort leaves them. Mean class accuracy: per-class recall averaged over the
union of labels that occur as truth or as prediction (a predicted-but-absent class adds a 0,
as in MMAction2).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["topk_from_scores", "top_k_accuracy", "mean_class_accuracy"]


def topk_from_scores(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best classes per row, best first (MMAction2's tie order)."""
    scores = np.atleast_2d(scores)
    return np.argsort(scores, axis=1)[:, -k:][:, ::-1]


def top_k_accuracy(topk_classes: Sequence[Sequence[int]], labels: Sequence[int], k: int) -> float:
    """Fraction of videos whose label is among the first k of their ranked classes."""
    if len(labels) == 0:
        return float("nan")
    hits = sum(int(label in list(ranked)[:k]) for ranked, label in zip(topk_classes, labels))
    return hits / len(labels)


def mean_class_accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
    preds_arr = np.asarray(preds, dtype=np.int64)
    labels_arr = np.asarray(labels, dtype=np.int64)
    if labels_arr.size == 0:
        return float("nan")
    classes = np.union1d(preds_arr, labels_arr)
    recalls = []
    for cls in classes:
        truth = labels_arr == cls
        count = int(truth.sum())
        recalls.append(float((preds_arr[truth] == cls).sum()) / count if count else 0.0)
    return float(np.mean(recalls))
