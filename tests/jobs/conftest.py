"""Fixtures the job tests share."""

from __future__ import annotations

import pytest
import torch

import x3d
from tests.jobs.labeljob import LABEL_TEST


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> str:
    """A random-weight checkpoint of the label tests' tiny model, its scores spread apart."""
    torch.manual_seed(0)
    model = x3d.build_model(LABEL_TEST)
    with torch.no_grad():
        model.cls_head.fc2.weight.mul_(50.0)  # spread the scores so videos differ
    path = tmp_path_factory.mktemp("ckpt") / "label_test.pth"
    x3d.checkpoints.save_mmaction2_checkpoint(model, path)
    return str(path)
