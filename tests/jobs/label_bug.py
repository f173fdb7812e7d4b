"""Test hook, imported through ``X3D_PRESETS_MODULE``: a programming error (a ValueError) inside
label's planning, so that a test can see what the command does with a bug of its own."""

import jobs.label


def _broken(cfg):
    raise ValueError("a bug in the job, not a mistake in the request")


jobs.label.plan_label = _broken
