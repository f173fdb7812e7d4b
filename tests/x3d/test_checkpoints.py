"""Checkpoint layouts, strict loading, and sources (local, file://, HTTP, S3) on real files.

Foreign layouts are built here from tests/data/x3d-keymap.tsv (MMAction2 key -> PySlowFast
key -> PyTorchVideo key, with shapes), independently of the rules in x3d/checkpoints.py.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import socket
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.x3d.keymap import KeyRow, load_keymap
from x3d.checkpoints import (
    CheckpointError,
    detect_layout,
    file_sha256,
    from_pyslowfast,
    from_pytorchvideo,
    load_checkpoint_into,
    load_model,
    resolve_checkpoint,
    save_mmaction2_checkpoint,
)
from x3d.model import X3D, build_model
from x3d.presets import Architecture

NBT = ".num_batches_tracked"


# ---------------------------------------------------------------- reference weights and layouts


@pytest.fixture(scope="module")
def keymap() -> dict[str, KeyRow]:
    """MMAction2 key -> its PySlowFast and PyTorchVideo keys and shapes."""
    table = load_keymap()
    assert len(table) == 568
    return table


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    """MMAction2-named weights where every tensor differs from a fresh model's."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, value in build_model("x3d_s").state_dict().items():
        if key.endswith(NBT):
            state[key] = torch.randint(1, 10_000, (), generator=gen)
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(value.shape, generator=gen)
    return state


@pytest.fixture(scope="module")
def mm_file(tmp_path_factory, reference) -> Path:
    return save_mmaction2_checkpoint(reference, tmp_path_factory.mktemp("ckpt") / "x3d_s_mm.pth", meta={"epoch": 3})


def to_pyslowfast(reference, keymap, nbt=True):
    return {
        keymap[k].pyslowfast: v.reshape(keymap[k].pyslowfast_shape)
        for k, v in reference.items()
        if nbt or not k.endswith(NBT)
    }


def to_pytorchvideo(reference, keymap):
    return {
        keymap[k].pytorchvideo: v.reshape(keymap[k].pytorchvideo_shape)
        for k, v in reference.items()
        if keymap[k].pytorchvideo is not None
    }


def assert_loaded(model, reference, nbt=True):
    ours = model.state_dict()
    assert ours.keys() == reference.keys()
    for key, value in reference.items():
        if key.endswith(NBT) and not nbt:
            assert ours[key].item() == 0, key
        else:
            assert torch.equal(ours[key], value), key


def without_nbt(state):
    return {k: v for k, v in state.items() if not k.endswith(NBT)}


# ---------------------------------------------------------------- layouts


LAYOUT_CASES = {
    # name: (builder(reference, keymap) -> object to torch.save, expected layout, has num_batches_tracked)
    "mmaction2": (lambda r, km: {"state_dict": r, "meta": {"epoch": 1}}, "mmaction2", True),
    "mmaction2-no-nbt": (lambda r, km: {"state_dict": without_nbt(r), "meta": {}}, "mmaction2", False),
    "mmaction2-bare": (lambda r, km: dict(r), "mmaction2", True),
    "mmaction2-module": (lambda r, km: {"state_dict": {"module." + k: v for k, v in r.items()}}, "mmaction2", True),
    "mmaction2-bare-module": (lambda r, km: {"module." + k: v for k, v in r.items()}, "mmaction2", True),
    "pyslowfast": (
        lambda r, km: {"model_state": to_pyslowfast(r, km), "epoch": 1, "cfg": "MODEL:\n  ARCH: x3d\n"},
        "pyslowfast",
        True,
    ),
    "pyslowfast-no-nbt": (
        lambda r, km: {"model_state": to_pyslowfast(r, km, nbt=False), "epoch": 1, "cfg": "x"},
        "pyslowfast",
        False,
    ),
    "pyslowfast-bare-module": (
        lambda r, km: {"module." + k: v for k, v in to_pyslowfast(r, km).items()},
        "pyslowfast",
        True,
    ),
    # A pickled config object (stands in for yacs' CfgNode): needs the full unpickler, which a
    # local file the user passed may use.
    "pyslowfast-pickled-cfg": (
        lambda r, km: {"model_state": to_pyslowfast(r, km), "epoch": 1, "cfg": argparse.Namespace(NUM_GPUS=8)},
        "pyslowfast",
        True,
    ),
}


@pytest.mark.parametrize("case", list(LAYOUT_CASES))
def test_every_layout_loads_identical_weights(case, reference, keymap, tmp_path):
    build, layout, nbt = LAYOUT_CASES[case]
    path = tmp_path / f"{case}.pth"
    torch.save(build(reference, keymap), path)

    model = build_model("x3d_s")
    info = load_checkpoint_into(model, path)

    assert info.layout == layout
    assert info.path == path
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert_loaded(model, reference, nbt=nbt)


def test_pytorchvideo_layout_fills_identity_shortcut_bn(reference, keymap, tmp_path):
    path = tmp_path / "X3D_S.pyth"
    torch.save({"model_state": to_pytorchvideo(reference, keymap)}, path)

    model = build_model("x3d_s")
    info = load_checkpoint_into(model, path)

    assert info.layout == "pytorchvideo"
    ours = model.state_dict()
    filled = "backbone.layer1.0.downsample.bn."
    for key, value in reference.items():
        if not key.startswith(filled) and not key.endswith(NBT):
            assert torch.equal(ours[key], value), key
    bn = model.backbone.layer1[0].downsample.bn
    x = torch.randn(2, 24, 3, 5, 5)
    assert torch.equal(bn(x), x)  # exact identity in eval mode


def test_filters_are_pure_and_drop_nothing():
    t = torch.zeros(3)
    sf = {
        "s4.pathway0_res10.branch2.se.fc2.bias": t,
        "s5.pathway0_res0.branch1_bn.running_var": t,
        "head.lin_5.weight": torch.zeros(2048, 432, 1, 1, 1),
        "head.lin_5_bn.weight": t,  # BN_LIN5 variant: we have no such layer
    }
    out = from_pyslowfast(sf)
    assert out.keys() == {
        "backbone.layer3.10.se_module.fc2.bias",
        "backbone.layer4.0.downsample.bn.running_var",
        "cls_head.fc1.weight",
        "head.lin_5_bn.weight",  # passed through, so the strict loader will name it
    }
    assert out["cls_head.fc1.weight"].shape == (2048, 432)
    assert "head.lin_5.weight" in sf and sf["head.lin_5.weight"].dim() == 5  # input untouched

    ptv = from_pytorchvideo({"blocks.1.res_blocks.0.branch1_conv.weight": torch.zeros(24, 24, 1, 1, 1)})
    bn = "backbone.layer1.0.downsample.bn."
    assert torch.equal(ptv[bn + "weight"], torch.ones(24)) and torch.equal(ptv[bn + "bias"], torch.zeros(24))
    assert torch.equal(ptv[bn + "running_mean"], torch.zeros(24))
    assert torch.equal(ptv[bn + "running_var"], torch.full((24,), 1 - 1e-5))


def test_unknown_key_from_foreign_layout_is_reported(reference, keymap, tmp_path):
    state = to_pyslowfast(reference, keymap)
    state["head.lin_5_bn.weight"] = torch.ones(2048)
    path = tmp_path / "x3d_s.pyth"
    torch.save({"model_state": state, "cfg": ""}, path)
    with pytest.raises(CheckpointError, match=r"layout guessed: pyslowfast\): 1 unexpected \(head\.lin_5_bn\.weight\)"):
        load_checkpoint_into(build_model("x3d_s"), path)


def test_detect_layout_from_top_level_object():
    t = torch.zeros(1)
    assert detect_layout({"state_dict": {"backbone.x": t}, "meta": {}}) == "mmaction2"
    assert detect_layout({"model_state": {"s1.pathway0_stem.conv.weight": t}, "cfg": ""}) == "pyslowfast"
    assert detect_layout({"model_state": {"blocks.0.norm.weight": t}}) == "pytorchvideo"
    assert detect_layout({"module.head.projection.weight": t}) == "pyslowfast"
    assert detect_layout({"cls_head.fc2.bias": t}) == "mmaction2"
    with pytest.raises(CheckpointError, match="cannot tell the checkpoint layout"):
        detect_layout({"features.0.weight": t})
    with pytest.raises(CheckpointError, match="no weights found"):
        detect_layout({"epoch": 3, "optimizer": {}})


# ---------------------------------------------------------------- clear errors


def test_renamed_key_names_missing_and_unexpected(reference, tmp_path):
    state = dict(reference)
    state["backbone.layer1.0.conv1.convv.weight"] = state.pop("backbone.layer1.0.conv1.conv.weight")
    path = save_mmaction2_checkpoint(state, tmp_path / "renamed.pth")
    with pytest.raises(CheckpointError) as err:
        load_model("x3d_s", checkpoint=path)
    message = str(err.value)
    assert message == (
        "checkpoint does not fit x3d_s (layout guessed: mmaction2): "
        "1 missing key (backbone.layer1.0.conv1.conv.weight), "
        "1 unexpected (backbone.layer1.0.conv1.convv.weight)"
    )


def test_explicit_wrong_layout_is_named(reference, keymap, tmp_path):
    path = tmp_path / "sf.pyth"
    torch.save({"model_state": to_pyslowfast(reference, keymap)}, path)
    # 484 = 568 keys - 84 num_batches_tracked (those are filled, never reported)
    expected = r"\(layout mmaction2\): 484 missing keys \(backbone\.conv1_s\.conv\.weight, .*, \.\.\.\), 568 unexpected"
    with pytest.raises(CheckpointError, match=expected):
        load_model("x3d_s", checkpoint=path, layout="mmaction2")


def test_wrong_shape_names_key_and_both_shapes(tmp_path):
    small_head = X3D(Architecture(num_classes=10))
    path = save_mmaction2_checkpoint(small_head, tmp_path / "k10.pth")
    with pytest.raises(CheckpointError) as err:
        load_model("x3d_s", checkpoint=path)
    assert "checkpoint does not fit x3d_s (layout guessed: mmaction2)" in str(err.value)
    assert "wrong shape for cls_head.fc2.weight: checkpoint [10, 2048], model [400, 2048]" in str(err.value)


def test_truncated_file_is_one_clear_line(mm_file, tmp_path):
    data = mm_file.read_bytes()
    path = tmp_path / "x.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_model("x3d_s", checkpoint=path)
    assert str(err.value) == f"{path}: not a readable checkpoint (truncated or corrupt?)"
    assert err.value.__cause__ is None and err.value.__suppress_context__

    for junk in (b"", b"\x80\x02garbage", b"<html>404</html>"):
        path.write_bytes(junk)
        with pytest.raises(CheckpointError, match="not a readable checkpoint"):
            load_model("x3d_s", checkpoint=path)


def test_missing_local_path(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match=f"checkpoint not found: {missing}"):
        resolve_checkpoint(missing)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        resolve_checkpoint(missing.as_uri())


# ---------------------------------------------------------------- load_model / save / local sources


def test_load_model_attaches_provenance_and_file_uri(mm_file, reference):
    model = load_model("x3d_s", checkpoint=mm_file.as_uri())
    assert not model.training
    assert model.checkpoint_path == str(mm_file)
    assert model.checkpoint_sha256 == file_sha256(mm_file) == hashlib.sha256(mm_file.read_bytes()).hexdigest()
    assert_loaded(model, reference)


def test_saved_checkpoint_is_mmengine_shaped(mm_file):
    obj = torch.load(mm_file, map_location="cpu", weights_only=True)
    assert set(obj) == {"state_dict", "meta"}
    assert obj["meta"]["epoch"] == 3
    assert len(obj["state_dict"]) == 568
    assert not list(mm_file.parent.glob(".*.part"))


# ---------------------------------------------------------------- HTTP


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_server(tmp_path, monkeypatch):
    monkeypatch.setenv("X3D_CACHE", str(tmp_path / "cache"))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "www"
    root.mkdir()
    hits: list[str] = []

    class Handler(_QuietHandler):
        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(root=root, url=f"http://127.0.0.1:{server.server_port}", hits=hits, cache=tmp_path / "cache")
    server.shutdown()
    server.server_close()


def _publish(server, src: Path, name: str) -> str:
    shutil.copyfile(src, server.root / name)
    return f"{server.url}/{name}"


def test_http_download_verifies_hash_and_reuses_cache(http_server, mm_file, reference):
    sha = file_sha256(mm_file)
    name = f"x3d_s_test_20201027-{sha[:8]}.pth"
    url = _publish(http_server, mm_file, name)

    model = load_model("x3d_s", checkpoint=url)

    assert model.checkpoint_path == str(http_server.cache / name)
    assert model.checkpoint_sha256 == sha
    assert_loaded(model, reference)
    assert len(http_server.hits) == 1
    assert sorted(p.name for p in http_server.cache.iterdir()) == [name]  # no temp file left

    assert resolve_checkpoint(url) == http_server.cache / name
    assert len(http_server.hits) == 1  # cached file verified, server not asked again


def test_http_hash_mismatch_deletes_download(http_server, mm_file):
    url = _publish(http_server, mm_file, "x3d_s-deadbeef.pth")
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint(url)
    message = str(err.value)
    assert "sha256 mismatch" in message and url in message
    assert "expected deadbeef" in message and f"got {file_sha256(mm_file)[:8]}" in message
    assert list(http_server.cache.iterdir()) == []


def test_http_404(http_server):
    url = f"{http_server.url}/missing-0123abcd.pth"
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint(url)
    assert str(err.value) == f"HTTP 404 for {url}"


def test_connection_refused_says_how_to_work_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("X3D_CACHE", str(tmp_path / "cache"))
    url = f"http://127.0.0.1:{_free_port()}/x3d_s-0123abcd.pth"
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint(url)
    message = str(err.value)
    assert message.startswith(f"could not download {url} (")
    assert "--checkpoint /path/to/file.pth" in message
    assert "X3D_CACHE" in message and "x3d_s-0123abcd.pth" in message
    assert "\n" not in message


def test_unverified_download_is_not_fully_unpickled(http_server, reference, keymap, tmp_path):
    src = tmp_path / "sf.pyth"
    torch.save({"model_state": to_pyslowfast(reference, keymap), "cfg": argparse.Namespace(A=1)}, src)

    unpinned = _publish(http_server, src, "x3d_s.pyth")
    with pytest.raises(CheckpointError, match="hash is not pinned.*--checkpoint"):
        load_model("x3d_s", checkpoint=unpinned)

    pinned = _publish(http_server, src, f"x3d_s-{file_sha256(src)[:8]}.pyth")
    model = load_model("x3d_s", checkpoint=pinned)
    assert model.checkpoint_layout == "pyslowfast"
    assert_loaded(model, reference)


# ---------------------------------------------------------------- S3 (moto server)


@pytest.fixture
def s3_bucket(request, monkeypatch, tmp_path):
    """The shared ``s3_env`` fixture when conftest provides it, else a private moto server."""
    monkeypatch.setenv("X3D_CACHE", str(tmp_path / "cache"))
    server = None
    try:
        bucket = request.getfixturevalue("s3_env")
    except pytest.FixtureLookupError:
        from moto.server import ThreadedMotoServer

        port = _free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        env = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        bucket = "x3d-checkpoints"
    import boto3
    from botocore.exceptions import ClientError

    client = boto3.client("s3")
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError:
        client.create_bucket(Bucket=bucket)
    yield SimpleNamespace(bucket=bucket, client=client, cache=tmp_path / "cache")
    if server is not None:
        server.stop()


def test_s3_download_and_cache(s3_bucket, mm_file, reference):
    sha = file_sha256(mm_file)
    key = f"models/x3d_s-{sha[:8]}.pth"
    s3_bucket.client.upload_file(str(mm_file), s3_bucket.bucket, key)
    uri = f"s3://{s3_bucket.bucket}/{key}"

    model = load_model("x3d_s", checkpoint=uri)
    assert model.checkpoint_path == str(s3_bucket.cache / f"x3d_s-{sha[:8]}.pth")
    assert model.checkpoint_sha256 == sha
    assert_loaded(model, reference)

    s3_bucket.client.delete_object(Bucket=s3_bucket.bucket, Key=key)
    assert resolve_checkpoint(uri) == s3_bucket.cache / f"x3d_s-{sha[:8]}.pth"  # from the cache

    with pytest.raises(CheckpointError, match=f"S3 object not found: s3://{s3_bucket.bucket}/models/nope.pth"):
        resolve_checkpoint(f"s3://{s3_bucket.bucket}/models/nope.pth")
