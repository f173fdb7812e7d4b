"""The cluster's shape as Ray reports it (``cluster.runtime.cluster_shape``), the input of the
pure sizing rule (tests/cluster/test_sizing.py)."""

from __future__ import annotations

import pytest

from cluster.runtime import cluster_shape

pytestmark = pytest.mark.slow  # needs the session's Ray


def test_the_session_cluster_is_two_cpus_on_one_node(ray_local):
    shape = cluster_shape()
    assert (shape.cpus, shape.gpus, shape.nodes, shape.node_cpus, shape.cpu_nodes) == (2, 0, 1, 2, 1)
