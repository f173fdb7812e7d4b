"""How a job sizes itself to the cluster it finds (``cluster.runtime.pipeline_config_for``).

Pure functions, tested on shapes without starting Ray (the session's own shape, as Ray reports
it, is checked in tests/cluster/test_cluster_shape.py). On a CPU-only cluster the model actors' threads take the cores and each decode slot holds half
a CPU beside them (bench/RESULTS.md: 3.1x the videos/s of the old even split on 2 cores); the
model actor forwards cache-sized batches (``worker.model_runner.cpu_batch_size``).
"""

from __future__ import annotations

import pytest

import x3d
from cluster.config import PipelineConfig
from cluster.errors import ClusterError
from cluster.sizing import (GPU_CALLS_PER_ACTOR, GPU_CLIPS_PER_GROUP, GPU_DECODE_BOUND_WAKE_MS, GPU_GROUP_MS,
                            GPU_GROUPS_PER_UNIT, GPU_WAKE_MS, ClusterShape, gpu_groups_per_call, size_pipeline)
from worker.model_runner import cpu_batch_size
from worker.spec import ModelSpec


def _spec(views: int = 30) -> ModelSpec:
    return ModelSpec(x3d.get_preset("x3d_s"), views)


#: the test session's local Ray: two CPUs on one node
TWO_CPUS = ClusterShape(cpus=2, gpus=0, nodes=1, node_cpus=2, cpu_nodes=1)


def pipeline_config_for(spec: ModelSpec, num_actors: int | None = None) -> PipelineConfig:
    return size_pipeline(TWO_CPUS, spec, num_actors=num_actors)


def test_one_cpu_actor_gets_every_core_and_decode_half_a_cpu():
    cfg = pipeline_config_for(_spec())
    assert (cfg.num_actors, cfg.actor_gpus, cfg.actor_threads, cfg.actor_cpus) == (1, 0.0, 2, 1.5)
    assert (cfg.decode_slots, cfg.decode_cpus) == (1, 0.5)
    assert cfg.num_actors * cfg.actor_cpus + cfg.decode_slots * cfg.decode_cpus == 2  # fits exactly


def test_two_cpu_actors_share_the_cores():
    cfg = pipeline_config_for(_spec(), num_actors=2)
    assert (cfg.actor_threads, cfg.actor_cpus, cfg.decode_slots, cfg.decode_cpus) == (1, 0.5, 2, 0.5)


def test_more_cpu_actors_than_fit_is_one_line_up_front():
    with pytest.raises(ClusterError, match=r"--num-actors 3 needs 3 CPUs but the cluster has 2"):
        pipeline_config_for(_spec(), num_actors=3)


def test_a_gpu_count_on_a_cpu_cluster_is_not_invented():
    cfg = pipeline_config_for(_spec())
    assert cfg.actor_gpus == 0.0 and cfg.clips_per_call == 30  # one 30-view video per actor call


@pytest.mark.parametrize(("model", "batch"), [("x3d_s", 2), ("x3d_m", 1), ("x3d_tiny", 27)])
def test_cpu_forward_batch_follows_the_clip_size(model, batch):
    assert cpu_batch_size(x3d.get_preset(model).protocol()) == batch


def test_units_and_calls_follow_the_models_speed():
    """Small units on CPU where a video takes seconds of forward, large ones where the model is
    fast (a tiny model, a GPU), so the per-task and per-call costs vanish (bench/RESULTS.md)."""
    cpu = ClusterShape(cpus=2, gpus=0, nodes=1, node_cpus=2, cpu_nodes=1)
    gpu = ClusterShape(cpus=16, gpus=1, nodes=1, node_cpus=16, cpu_nodes=1)
    tiny = ModelSpec(x3d.get_preset("x3d_tiny"), 1)
    assert (size_pipeline(cpu, _spec(30)).clips_per_call, size_pipeline(cpu, _spec(30)).unit_videos) == (30, 4)
    assert (size_pipeline(cpu, tiny).clips_per_call, size_pipeline(cpu, tiny).unit_videos) == (30, 60)
    on_gpu = size_pipeline(gpu, _spec(10))
    per_group = GPU_CLIPS_PER_GROUP // 10
    assert on_gpu.unit_videos == GPU_GROUPS_PER_UNIT * per_group
    assert size_pipeline(gpu, _spec(30)).unit_videos == GPU_GROUPS_PER_UNIT * (GPU_CLIPS_PER_GROUP // 30)
    assert on_gpu.decode_slots == 14 and on_gpu.max_decode_calls >= 1000  # 2 CPUs to the actor
    # Few, large events on a GPU (the driver's CPU is paid per event): a group is up to
    # GPU_CLIPS_PER_GROUP clips' worth of videos, a call up to two groups, the driver wakes at most
    # every GPU_WAKE_MS while groups wait for an actor (GPU_DECODE_BOUND_WAKE_MS while none does),
    # and more calls per actor cover a reply seen that late. CPU jobs: a video per group, woken
    # at each event.
    cpu_config = size_pipeline(cpu, _spec(30))
    assert on_gpu.group_ms == GPU_GROUP_MS > cpu_config.group_ms == PipelineConfig.group_ms
    assert (on_gpu.group_videos, on_gpu.wake_ms, on_gpu.calls_per_actor) == (per_group, GPU_WAKE_MS, GPU_CALLS_PER_ACTOR)
    assert (cpu_config.group_videos, cpu_config.wake_ms, cpu_config.calls_per_actor) == (1, 0.0, PipelineConfig.calls_per_actor)
    assert on_gpu.decode_bound_wake_ms == GPU_DECODE_BOUND_WAKE_MS > GPU_WAKE_MS and cpu_config.decode_bound_wake_ms == 0.0
    # --batch-size: calls of one group, as large as asked
    assert (size_pipeline(gpu, _spec(10), batch_size=64).group_videos, size_pipeline(gpu, _spec(10), batch_size=64).clips_per_call) == (6, 64)


@pytest.mark.parametrize(("model", "views", "groups", "call_clips"),
                         [("x3d_s", 10, 2, 512), ("x3d_s", 30, 2, 512), ("x3d_m", 10, 1, 256), ("x3d_tiny", 1, 2, 512)])
def test_gpu_calls_hold_about_the_same_input_whatever_the_model(model, views, groups, call_clips):
    """A GPU call holds up to X3D-M's 256 clips' worth of input voxels: X3D-S (13x182x182 clips)
    fits two groups of 256 clips, X3D-M (16x256x256) one; never more than two."""
    spec = ModelSpec(x3d.get_preset(model), views)
    config = size_pipeline(ClusterShape(cpus=16, gpus=1, nodes=1, node_cpus=16, cpu_nodes=1), spec)
    assert gpu_groups_per_call(spec) == groups
    assert config.clips_per_call == call_clips
    assert config.group_videos == GPU_CLIPS_PER_GROUP // views


def test_small_gpu_nodes_keep_a_cpu_to_decode():
    """Two nodes of 2 CPUs and 1 GPU (tests/cluster/test_multinode.py's shape): an actor that
    took both CPUs of its node would leave no CPU anywhere for a decode slot, and the run would
    wait for ever. The actor takes one; with CPUs to spare it takes two."""
    small = size_pipeline(ClusterShape(cpus=4, gpus=2, nodes=3, node_cpus=2, cpu_nodes=2), _spec(10))
    assert (small.actor_cpus, small.actor_threads, small.decode_slots) == (1.0, 1, 2)
    assert small.actor_concurrency == 2
    roomy = size_pipeline(ClusterShape(cpus=16, gpus=1, nodes=1, node_cpus=16, cpu_nodes=1), _spec(10))
    assert (roomy.actor_cpus, roomy.actor_threads, roomy.decode_slots) == (2.0, 2, 14)


def test_actors_per_gpu_share_each_gpu_and_prepare_while_computing():
    """Sizing is pure: no Ray. Each GPU actor holds 1/actors_per_gpu of a GPU, two CPUs and
    threads for its copies, and two calls at once (one computing, one being prepared)."""
    from cluster.sizing import GPU_ACTOR_CPUS, ClusterShape, size_pipeline

    gpus = ClusterShape(cpus=32, gpus=2, nodes=1, node_cpus=32, cpu_nodes=1)
    one = size_pipeline(gpus, _spec(10))
    assert (one.num_actors, one.actor_gpus, one.actor_cpus, one.actor_threads, one.actor_concurrency) == (2, 1.0, 2.0, 2, 2)
    three = size_pipeline(gpus, _spec(10), actors_per_gpu=3)
    assert three.num_actors == 6 and abs(three.actor_gpus * 3 - 1.0) < 1e-9
    assert three.decode_slots == 32 - 6 * GPU_ACTOR_CPUS
    assert size_pipeline(gpus, _spec(10), num_actors=5, actors_per_gpu=3).num_actors == 5
    with pytest.raises(ClusterError, match="2 GPUs at 3 actor"):
        size_pipeline(ClusterShape(cpus=32, gpus=1, nodes=1, node_cpus=32, cpu_nodes=1), _spec(10), num_actors=4, actors_per_gpu=3)
    cpu = size_pipeline(ClusterShape(cpus=2, gpus=0, nodes=1, node_cpus=2, cpu_nodes=1), _spec(30), actors_per_gpu=3)
    assert (cpu.actor_gpus, cpu.actor_concurrency) == (0.0, 1)


def test_sizing_imports_no_ray():
    import subprocess
    import sys

    code = "import sys, cluster.sizing; assert 'ray' not in sys.modules, 'cluster.sizing imported ray'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:]


def test_a_partition_sizes_to_its_share_of_the_gpus():
    """--partition i/n: n drivers on one GPU cluster split its GPUs (and the CPUs with them)
    instead of each asking for all of them; a CPU-only cluster is not split."""
    from cluster.sizing import share_of

    cluster = ClusterShape(cpus=1024, gpus=64, nodes=64, node_cpus=16, cpu_nodes=64)
    parts = [size_pipeline(share_of(cluster, i, 4), _spec()) for i in range(4)]
    assert [(p.num_actors, p.actor_gpus, p.decode_slots) for p in parts] == [(16, 1.0, 256 - 32)] * 4
    uneven = [share_of(cluster, i, 3) for i in range(3)]
    assert [s.gpus for s in uneven] == [22, 21, 21] and sum(s.cpus for s in uneven) == pytest.approx(1024)
    assert share_of(cluster, 0, 1) == cluster and share_of(TWO_CPUS, 1, 2) == TWO_CPUS
    with pytest.raises(ClusterError, match="--partition 2/3: the cluster's 2 GPU.s. do not go round 3 drivers"):
        share_of(ClusterShape(cpus=32, gpus=2, nodes=1, node_cpus=32, cpu_nodes=1), 2, 3)
