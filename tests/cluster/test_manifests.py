"""The launch files in cluster/: parsed and checked, without a cloud or a Kubernetes cluster.

* ``rayjob.yaml`` against the fields of KubeRay's published ``RayJob`` CRD (``ray.io/v1``). The
  field names below are those of ``ray-operator/config/crd/bases/ray.io_rayjobs.yaml`` in KubeRay
  v1.4.2 (https://ray-project.github.io/kuberay/reference/api/); a field outside them would be
  dropped or rejected by the API server. Only fields present since KubeRay v1.2 are used by the
  manifest, and ``rayStartParams``, required there until v1.3, is kept.
* ``ray-cluster.yaml`` against the schema the Ray cluster launcher itself validates with
  (``ray/autoscaler/ray-schema.json`` of the installed Ray), plus what the launcher checks
  beyond it and what this project needs (a GPU worker type, matching head/worker ports).
* Both scale GPU workers from zero for a run and back after it (autoscaler on, minimum 0, an
  idle timeout that docs/cluster.md states).
* ``Dockerfile``: the project goes in, with every runtime dependency of pyproject.toml, and
  the image tag and Ray version are the ones the manifests name.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.packaging import shipped_top_level

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"

# KubeRay v1.4.2, ray.io/v1 RayJob: properties of spec, spec.rayClusterSpec,
# spec.rayClusterSpec.headGroupSpec and spec.rayClusterSpec.workerGroupSpecs[].
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionPolicy", "entrypoint",
    "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "metadata",
    "rayClusterSpec", "runtimeEnvYAML", "shutdownAfterJobFinishes", "submissionMode", "submitterConfig",
    "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished",
}  # fmt: skip
RAYCLUSTER_SPEC_FIELDS = {
    "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec",
    "headServiceAnnotations", "managedBy", "rayVersion", "suspend", "workerGroupSpecs",
}  # fmt: skip
RAYCLUSTER_SPEC_REQUIRED = {"headGroupSpec"}
HEAD_GROUP_FIELDS = {"enableIngress", "headService", "rayStartParams", "serviceType", "template"}
HEAD_GROUP_REQUIRED = {"template", "rayStartParams"}  # rayStartParams: required before v1.3
WORKER_GROUP_FIELDS = {
    "groupName", "idleTimeoutSeconds", "maxReplicas", "minReplicas", "numOfHosts", "rayStartParams",
    "replicas", "scaleStrategy", "suspend", "template",
}  # fmt: skip
WORKER_GROUP_REQUIRED = {"groupName", "maxReplicas", "minReplicas", "template", "rayStartParams"}
# spec.rayClusterSpec.autoscalerOptions (KubeRay v1.4.2), and its upscalingMode enum
AUTOSCALER_OPTIONS_FIELDS = {
    "env", "envFrom", "idleTimeoutSeconds", "image", "imagePullPolicy", "resources", "securityContext",
    "upscalingMode", "volumeMounts",
}  # fmt: skip
UPSCALING_MODES = {"Default", "Aggressive", "Conservative"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode"}
INT_FIELDS = ("activeDeadlineSeconds", "backoffLimit", "ttlSecondsAfterFinished")
DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())


@pytest.fixture(scope="module")
def launcher() -> dict:
    return yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (CLUSTER / "Dockerfile").read_text()


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in dockerfile.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        current += " " + line[:-1] if line.endswith("\\") else " " + line
        if not line.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def _image_tag(dockerfile: str) -> str:
    """The tag the Dockerfile's build instructions give the image (``docker build ... -t TAG``)."""
    found = re.findall(r"docker build\b.*?\s(?:-t|--tag)[ =](\S+)", dockerfile)
    assert len(set(found)) == 1, f"the Dockerfile should say how to build it, with one tag: {found}"
    return found[0]


def _pip_requirements(dockerfile: str) -> list[str]:
    """Every requirement named by a ``pip install`` in a RUN instruction (quotes removed)."""
    reqs = []
    for op, args in _instructions(dockerfile):
        if op != "RUN":
            continue
        for command in re.split(r"&&|;", args):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"] or words[1:3] == ["-m", "pip"]:
                reqs += [w for w in words[2:] if not w.startswith("-") and w not in ("install", ".")]
    return reqs


def _req_name(req: str) -> str:
    return re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0].lower().replace("_", "-")


def _ray_pin(dockerfile: str) -> str:
    pins = [r for r in _pip_requirements(dockerfile) if _req_name(r) == "ray"]
    assert len(pins) == 1, pins
    match = re.fullmatch(r"ray(\[[^\]]*\])?==([0-9][0-9.]*)", pins[0])
    assert match, f"the image must pin one exact Ray (head, workers and RayJob must agree): {pins[0]}"
    return match.group(2)


def _workdir(dockerfile: str) -> str:
    dirs = [args for op, args in _instructions(dockerfile) if op == "WORKDIR"]
    assert dirs, "no WORKDIR"
    return dirs[-1]


def _containers(pod_template: dict) -> list[dict]:
    containers = pod_template["spec"]["containers"]
    assert containers, "a pod template without containers"
    return containers


# ----------------------------------------------------------------------------- RayJob


def test_rayjob_uses_only_published_crd_fields(rayjob: dict):
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert rayjob["kind"] == "RayJob"
    assert set(rayjob) <= {"apiVersion", "kind", "metadata", "spec"}
    name = rayjob["metadata"]["name"]
    assert DNS1123.fullmatch(name) and len(name) <= 63, name

    spec = rayjob["spec"]
    assert set(spec) <= RAYJOB_SPEC_FIELDS, set(spec) - RAYJOB_SPEC_FIELDS
    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= RAYCLUSTER_SPEC_FIELDS, set(cluster) - RAYCLUSTER_SPEC_FIELDS
    assert RAYCLUSTER_SPEC_REQUIRED <= set(cluster)
    head = cluster["headGroupSpec"]
    assert set(head) <= HEAD_GROUP_FIELDS, set(head) - HEAD_GROUP_FIELDS
    assert HEAD_GROUP_REQUIRED <= set(head), HEAD_GROUP_REQUIRED - set(head)
    groups = cluster["workerGroupSpecs"]
    assert isinstance(groups, list) and groups
    for group in groups:
        assert set(group) <= WORKER_GROUP_FIELDS, set(group) - WORKER_GROUP_FIELDS
        assert WORKER_GROUP_REQUIRED <= set(group), WORKER_GROUP_REQUIRED - set(group)
        assert DNS1123.fullmatch(group["groupName"]), group["groupName"]
        assert 0 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
    assert len({g["groupName"] for g in groups}) == len(groups)

    # The CRD's types: strings, booleans, integers, an enum, map[string]string.
    assert isinstance(spec["entrypoint"], str)
    assert isinstance(spec.get("shutdownAfterJobFinishes", False), bool)
    for key in INT_FIELDS:
        if key in spec:
            assert isinstance(spec[key], int) and not isinstance(spec[key], bool) and spec[key] >= 0, key
    assert spec.get("submissionMode", "K8sJobMode") in SUBMISSION_MODES
    assert isinstance(cluster["rayVersion"], str)
    for params in [head["rayStartParams"]] + [g["rayStartParams"] for g in groups]:
        assert isinstance(params, dict)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items()), params
    for template in [head["template"]] + [g["template"] for g in groups]:
        for container in _containers(template):
            assert container.get("name") and container.get("image"), container


def test_rayjob_runs_the_evaluation_from_the_image(rayjob: dict, dockerfile: str):
    import submit
    from jobs.datasets import resolve_dataset

    spec = rayjob["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "submit.py"], argv
    try:
        args = submit.parse_args(argv[2:])  # flags the CLI really has
    except SystemExit as exc:
        pytest.fail(f"submit.py rejects the RayJob entrypoint's flags (exit {exc.code}): {spec['entrypoint']}")
    assert args.command == "evaluate"
    assert args.dataset == "k400_val"
    dataset = resolve_dataset(args.dataset, data_root=args.data_root, ann_file=args.ann_file)
    assert dataset.data_root.startswith("s3://") and dataset.ann_file.startswith("s3://"), dataset
    assert args.output.startswith("s3://"), args.output  # workers write results themselves: no shared disk
    assert not re.search(r"(?i)secret|access[-_]?key|token|password", spec["entrypoint"])

    # The project is the job's working dir: the image's WORKDIR, in the runtime env and the pods.
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(runtime_env, dict)
    workdir = _workdir(dockerfile)
    assert runtime_env["working_dir"] == workdir
    assert all(isinstance(v, str) for v in runtime_env.get("env_vars", {}).values())
    assert not any(k.startswith("AWS_") for k in runtime_env.get("env_vars", {})), "credentials come from IAM roles"
    cluster = spec["rayClusterSpec"]
    for template in [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]:
        for container in _containers(template):
            assert container.get("workingDir", workdir) == workdir
            assert not any(e.get("name", "").startswith("AWS_SECRET") for e in container.get("env", []))


def test_images_and_ray_version_agree(rayjob: dict, launcher: dict, dockerfile: str):
    tag = _image_tag(dockerfile)
    cluster = rayjob["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    images = {c["image"] for t in templates for c in _containers(t)}
    assert images == {tag}, f"head and workers must run the image cluster/Dockerfile builds ({tag}): {images}"
    assert launcher["docker"]["image"] == tag
    # One Ray everywhere: the image's pin is what KubeRay is told the cluster runs.
    assert cluster["rayVersion"] == _ray_pin(dockerfile)


def test_rayjob_workers_have_a_gpu_each(rayjob: dict):
    groups = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    for group in groups:
        for container in _containers(group["template"]):
            resources = container.get("resources", {})
            assert str(resources.get("limits", {}).get("nvidia.com/gpu", "0")) not in ("0", ""), group["groupName"]
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"].get("num-gpus", "0") == "0"  # no model actor on the head


def _gpu_groups(rayjob: dict) -> list[dict]:
    return [g for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
            if any(str(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", "0")) != "0" for c in _containers(g["template"]))]


def test_rayjob_scales_gpu_workers_from_zero_and_back(rayjob: dict):
    """KubeRay's autoscaler is on, no GPU worker runs before the run asks for one, and an idle
    one is removed after a stated time; docs/cluster.md states the same time."""
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster.get("enableInTreeAutoscaling") is True
    options = cluster["autoscalerOptions"]
    assert set(options) <= AUTOSCALER_OPTIONS_FIELDS, set(options) - AUTOSCALER_OPTIONS_FIELDS
    assert options.get("upscalingMode", "Default") in UPSCALING_MODES
    idle = options["idleTimeoutSeconds"]
    assert isinstance(idle, int) and not isinstance(idle, bool) and 0 < idle <= 900, idle
    groups = _gpu_groups(rayjob)
    assert groups, "no GPU worker group"
    for group in groups:
        assert group["minReplicas"] == 0 and group.get("replicas", 0) == 0, group["groupName"]
        assert group["maxReplicas"] >= 1
    assert rayjob["spec"].get("shutdownAfterJobFinishes") is True  # and the cluster goes after the run
    assert f"idleTimeoutSeconds: {idle}" in (ROOT / "docs" / "cluster.md").read_text()
    # --gpus auto wants the pool's size, not the 0 GPUs up when the run starts
    env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])["env_vars"]
    assert int(env["X3D_GPUS"]) == sum(g["maxReplicas"] for g in groups)


# ----------------------------------------------------------------------------- cluster launcher


def test_launcher_config_passes_rays_own_schema(launcher: dict):
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(launcher, schema)  # raises with the offending path
    assert {"cluster_name", "provider", "available_node_types", "head_node_type", "max_workers"} <= set(launcher)
    assert launcher["provider"]["type"]


def test_launcher_node_types_and_start_commands(launcher: dict):
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    workers = {name: t for name, t in types.items() if name != launcher["head_node_type"]}
    assert workers, "no worker node type"
    for name, node in types.items():
        assert "node_config" in node and isinstance(node.get("resources", {}), dict), name
    for name, node in workers.items():
        assert 0 <= node.get("min_workers", 0) <= node.get("max_workers", launcher["max_workers"]) <= launcher["max_workers"]

    def gpus(node: dict) -> bool:  # declared, or an AWS GPU instance family the autoscaler detects
        if node.get("resources", {}).get("GPU", 0) > 0:
            return True
        return re.match(r"(g|p)\d", node["node_config"].get("InstanceType", "")) is not None

    assert any(gpus(node) for node in workers.values()), "no GPU worker type"
    assert not gpus(types[launcher["head_node_type"]]), "the head should not be a GPU machine"

    head_start = " ".join(launcher["head_start_ray_commands"])
    worker_start = " ".join(launcher["worker_start_ray_commands"])
    assert "ray start" in head_start and "--head" in head_start
    assert "--autoscaling-config" in head_start
    port = re.search(r"--port[= ](\d+)", head_start)
    assert port, head_start
    assert re.search(rf"--address[= ]\S*\$RAY_HEAD_IP:{port.group(1)}\b", worker_start), worker_start
    # Workers need no manual install: the image has the project, setup only checks it is there.
    setup = " ".join(launcher.get("setup_commands", []))
    for package in sorted(shipped_top_level() - {"submit"}):  # every package the code imports
        assert re.search(rf"\b{package}\b", setup), f"setup_commands never check that {package} is installed"


def test_launcher_scales_gpu_workers_from_zero_and_back(launcher: dict):
    """The head alone between runs: every GPU worker type starts at zero, declares what it gives
    (so the autoscaler can start one for an actor asking a GPU before any exists), and a node
    idle for the stated time is terminated; docs/cluster.md states the same time."""
    types = launcher["available_node_types"]
    gpu_types = {name: t for name, t in types.items() if t.get("resources", {}).get("GPU", 0) > 0}
    assert gpu_types, "no worker type declares its GPUs"
    assert launcher["head_node_type"] not in gpu_types
    for name, node in gpu_types.items():
        assert node.get("min_workers", 0) == 0, name
        assert node["max_workers"] >= 1 and node["resources"].get("CPU", 0) >= 1, name
    idle = launcher["idle_timeout_minutes"]
    assert 0 < idle <= 15, idle
    assert launcher.get("upscaling_speed", 1.0) > 0
    assert "--autoscaling-config" in " ".join(launcher["head_start_ray_commands"])
    assert f"idle_timeout_minutes: {idle}" in (ROOT / "docs" / "cluster.md").read_text()
    # --gpus auto wants the pool's size, not the 0 GPUs up when the run starts
    gpus = sum(t["max_workers"] * t["resources"]["GPU"] for t in gpu_types.values())
    assert any(c.startswith(f"X3D_GPUS={gpus:g} ray start --head") for c in launcher["head_start_ray_commands"])


# ----------------------------------------------------------------------------- Dockerfile


def test_dockerfile_installs_the_project(dockerfile: str):
    instructions = _instructions(dockerfile)
    base = next(args for op, args in instructions if op == "FROM")
    assert "cuda" in base.lower() and "pytorch" in base.lower(), base  # CUDA PyTorch base

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # The whole build context goes in and is installed as a user installs it, so the image holds
    # what the wheel holds (tests/test_packaging.py checks the wheel), not a hand-kept folder list.
    copies = [args.split() for op, args in instructions if op in ("COPY", "ADD")]
    assert copies == [[".", "."]], f"the image should COPY the build context once, not folder by folder: {copies}"
    runs = " ".join(args for op, args in instructions if op == "RUN")
    assert re.search(r"pip install\b[^&;]*\s\.(\s|$)", runs), "the project is not pip-installed (`pip install .`)"
    assert not re.search(r"pip install\b[^&;]*\s-e\s", runs), "an editable install is not what users get"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not set(ignored) & shipped_top_level(), "the .dockerignore drops a package the code imports"
    # The project goes in with --no-deps (torch stays the base image's CUDA build), so the image
    # must install every other runtime dependency itself.
    wanted = {_req_name(r) for r in project["project"]["dependencies"]} - {"torch"}
    have = {_req_name(r) for r in _pip_requirements(dockerfile)}
    assert wanted <= have, f"dependencies missing from the image: {sorted(wanted - have)}"
    assert "torch" not in have, "reinstalling torch would replace the base image's CUDA build"
    assert _workdir(dockerfile).startswith("/")


def test_image_keeps_idle_decode_workers_as_the_local_ray_does(dockerfile: str):
    """`ray start` in the image reads RAY_idle_worker_killing_time_threshold_ms from the
    environment; without it a model-bound node restarts a decode worker for every video."""
    from cluster.runtime import IDLE_WORKER_KEEP_MS, LOCAL_RAY_CONFIG

    env = " ".join(args for op, args in _instructions(dockerfile) if op == "ENV")
    found = re.search(r"\bRAY_idle_worker_killing_time_threshold_ms=(\d+)", env)
    assert found, "the image's ENV does not set RAY_idle_worker_killing_time_threshold_ms"
    assert int(found.group(1)) == IDLE_WORKER_KEEP_MS == LOCAL_RAY_CONFIG["idle_worker_killing_time_threshold_ms"]
