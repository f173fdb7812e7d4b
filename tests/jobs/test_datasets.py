"""jobs.datasets: registry, flags, every annotation format, and the one-line errors."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from jobs import datasets
from x3d import storage
from jobs.datasets import DatasetError, DatasetSpec, VideoItem


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def items(spec: DatasetSpec) -> list[VideoItem]:
    return list(datasets.iter_items(spec))


# --------------------------------------------------------------------------- registry


def test_shipped_k400_val_entry():
    spec = datasets.load_registry()["k400_val"]
    assert spec == DatasetSpec(
        name="k400_val",
        data_root="data/kinetics400/videos_val",
        ann_file="data/kinetics400/kinetics400_val_list_videos.txt",
        ann_format="video_list",
        label_map="k400",
        model="x3d_s",
        description=spec.description,
        source="jobs/datasets.toml",
        published="kinetics400-val",
    )


def test_k400_label_map():
    names = datasets.read_label_map("k400")
    assert len(names) == 400
    assert names[0] == "abseiling" and names[1] == "air drumming"
    assert names == sorted(names)  # the protocol: alphabetical, index = line number


def test_unknown_dataset_lists_known_names():
    with pytest.raises(DatasetError) as err:
        datasets.resolve_dataset("k700_val")
    message = str(err.value)
    assert message.startswith("unknown dataset 'k700_val'; known datasets: k400_val")
    assert "\n" not in message


def test_no_dataset_and_no_flags():
    with pytest.raises(DatasetError, match=r"^no dataset given: name one \(k400_val.*--ann-file"):
        datasets.resolve_dataset(None)


def test_flags_override_an_entry():
    spec = datasets.resolve_dataset("k400_val", data_root="s3://bkt/k400/val", label_map="my_labels.txt")
    assert spec.data_root == "s3://bkt/k400/val"
    assert spec.label_map == "my_labels.txt"
    assert spec.ann_file == "data/kinetics400/kinetics400_val_list_videos.txt"
    assert spec.model == "x3d_s"


def test_flags_alone_define_a_custom_dataset():
    spec = datasets.resolve_dataset(None, ann_file="list.txt", data_root="videos")
    assert (spec.name, spec.ann_file, spec.data_root, spec.ann_format, spec.source) == (
        "custom",
        "list.txt",
        "videos",
        "auto",
        None,
    )
    assert datasets.resolve_dataset(None, data_root="s3://bkt/videos/").ann_format == "prefix"


def test_bad_ann_format_flag():
    with pytest.raises(DatasetError, match=r"^--ann-format: unknown ann_format 'csv' \(one of: auto, video_list"):
        datasets.resolve_dataset(None, ann_file="x.txt", ann_format="csv")


def test_user_file_adds_and_replaces_entries(tmp_path: Path):
    user = write(
        tmp_path / "mine.toml",
        """
        [datasets.k400_val]
        data_root = "/mnt/k400/val"
        ann_file = "/mnt/k400/val.csv"
        ann_format = "slowfast_csv"
        separator = ","

        [datasets.clips]
        data_root = "s3://bkt/clips/"
        ann_format = "prefix"
        """,
    )
    registry = datasets.load_registry(user)
    replaced = registry["k400_val"]
    assert (replaced.data_root, replaced.ann_file, replaced.ann_format, replaced.separator) == (
        "/mnt/k400/val",
        "/mnt/k400/val.csv",
        "slowfast_csv",
        ",",
    )
    assert replaced.label_map is None and replaced.source == user  # replaced whole, not merged
    assert registry["clips"].data_root == "s3://bkt/clips/"
    assert registry["k400_val_rawframes"].source == "jobs/datasets.toml"
    assert datasets.resolve_dataset("clips", datasets_file=user).ann_format == "prefix"


def test_user_file_mistakes(tmp_path: Path):
    typo = write(tmp_path / "typo.toml", '[datasets.x]\nann_fil = "a.txt"\n')
    with pytest.raises(DatasetError, match=r"typo.toml: dataset 'x' has unknown key 'ann_fil'"):
        datasets.load_registry(typo)
    broken = write(tmp_path / "broken.toml", "[datasets.x\n")
    with pytest.raises(DatasetError, match=r"broken.toml: invalid TOML"):
        datasets.load_registry(broken)
    with pytest.raises(DatasetError) as err:
        datasets.load_registry(str(tmp_path / "absent.toml"))
    assert str(err.value) == f"datasets file {tmp_path / 'absent.toml'} not found (given with --datasets)"


# --------------------------------------------------------------------------- check_dataset


def test_missing_k400_files_reported_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)  # relative registry paths are relative to the working directory
    spec = datasets.resolve_dataset("k400_val")
    with pytest.raises(DatasetError) as err:
        datasets.check_dataset(spec)
    assert str(err.value) == (
        "annotation file data/kinetics400/kinetics400_val_list_videos.txt not found "
        "(set it with --ann-file, or the 'ann_file' of dataset 'k400_val' in jobs/datasets.toml)"
    )

    write(tmp_path / "data/kinetics400/kinetics400_val_list_videos.txt", "a.mp4 0\n")
    with pytest.raises(DatasetError) as err:
        datasets.check_dataset(spec)
    assert str(err.value) == (
        "data root data/kinetics400/videos_val not found "
        "(set it with --data-root, or the 'data_root' of dataset 'k400_val' in jobs/datasets.toml)"
    )

    (tmp_path / "data/kinetics400/videos_val").mkdir()
    datasets.check_dataset(spec)


def test_missing_files_of_a_custom_dataset(tmp_path: Path):
    ann = write(tmp_path / "list.txt", "a.mp4\n")
    spec = datasets.resolve_dataset(None, ann_file=ann, label_map=str(tmp_path / "labels.txt"))
    with pytest.raises(DatasetError) as err:
        datasets.check_dataset(spec)
    assert str(err.value) == f"label map {tmp_path / 'labels.txt'} not found (set it with --label-map)"

    spec = datasets.resolve_dataset(None, data_root=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError) as err:
        datasets.check_dataset(spec)
    assert str(err.value) == f"data root {tmp_path / 'nowhere'} not found (set it with --data-root)"

    with pytest.raises(DatasetError, match=r"^dataset 'custom' has no annotation file \(set it with --ann-file\)$"):
        datasets.check_dataset(DatasetSpec(name="custom", ann_format="video_list"))


def test_missing_s3_files_are_reported(s3_env: str):
    spec = datasets.resolve_dataset(None, ann_file=f"s3://{s3_env}/ann/val.txt", data_root=f"s3://{s3_env}/v")
    with pytest.raises(DatasetError, match=rf"^annotation file s3://{s3_env}/ann/val.txt not found"):
        datasets.check_dataset(spec)
    storage.write_bytes(f"s3://{s3_env}/ann/val.txt", b"a.mp4 1\n")
    with pytest.raises(DatasetError, match=rf"^data root s3://{s3_env}/v not found"):
        datasets.check_dataset(spec)
    storage.write_bytes(f"s3://{s3_env}/v/a.mp4", b"video")
    datasets.check_dataset(spec)


# --------------------------------------------------------------------------- formats


def test_video_list_labelled_and_unlabelled(tmp_path: Path):
    ann = write(tmp_path / "val.txt", "abseiling/a.mp4 0\n\nzumba/b.mp4 399\nunknown/c.mp4\nd.mp4 -1\n")
    spec = DatasetSpec(name="t", data_root="videos", ann_file=ann, ann_format="video_list", label_map="k400")
    assert items(spec) == [
        VideoItem("abseiling/a.mp4", os.path.abspath("videos/abseiling/a.mp4"), 0, None, "video"),
        VideoItem("zumba/b.mp4", os.path.abspath("videos/zumba/b.mp4"), 399, None, "video"),
        VideoItem("unknown/c.mp4", os.path.abspath("videos/unknown/c.mp4"), None, None, "video"),
        VideoItem("d.mp4", os.path.abspath("videos/d.mp4"), None, None, "video"),
    ]


def test_rawframe_list(tmp_path: Path):
    ann = write(tmp_path / "val_rawframes.txt", "abseiling/vid1 300 0\nvid2 250 7\nvid3 90\n")
    spec = DatasetSpec(name="t", data_root="s3://bkt/frames/", ann_file=ann, ann_format="rawframe_list")
    assert items(spec) == [
        VideoItem("abseiling/vid1", "s3://bkt/frames/abseiling/vid1", 0, 300, "rawframes"),
        VideoItem("vid2", "s3://bkt/frames/vid2", 7, 250, "rawframes"),
        VideoItem("vid3", "s3://bkt/frames/vid3", None, 90, "rawframes"),
    ]


def test_slowfast_csv_all_layouts_and_separator(tmp_path: Path):
    ann = write(tmp_path / "val.csv", "/abs/a.mp4 3\nb.mp4 x 4\nc.mp4\n")
    spec = DatasetSpec(name="t", data_root="root", ann_file=ann, ann_format="slowfast_csv")
    assert [(i.key, i.uri, i.label) for i in items(spec)] == [
        ("/abs/a.mp4", "/abs/a.mp4", 3),  # absolute paths are used as written
        ("b.mp4", os.path.abspath("root/b.mp4"), 4),  # relative: against the folder the job started in
        ("c.mp4", os.path.abspath("root/c.mp4"), None),
    ]
    commas = write(tmp_path / "val2.csv", "my clip.mp4,5\ns3://other/d.mp4,6\n")
    spec = DatasetSpec(name="t", data_root="root", ann_file=commas, ann_format="slowfast_csv", separator=",")
    assert [(i.key, i.uri, i.label) for i in items(spec)] == [
        ("my clip.mp4", os.path.abspath("root/my clip.mp4"), 5),
        ("s3://other/d.mp4", "s3://other/d.mp4", 6),
    ]


def test_path_list(tmp_path: Path):
    ann = write(tmp_path / "paths.txt", "s3://bkt/a.mp4\n  /data/with space.mkv  \n\nrel/c.webm\n")
    spec = DatasetSpec(name="t", ann_file=ann, ann_format="path_list")
    assert [(i.key, i.uri, i.label) for i in items(spec)] == [
        ("s3://bkt/a.mp4", "s3://bkt/a.mp4", None),
        ("/data/with space.mkv", "/data/with space.mkv", None),
        ("rel/c.webm", os.path.abspath("rel/c.webm"), None),
    ]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a/b.mp4 3\n", "video_list"),
        ("a/b.mp4\n", "path_list"),
        ("a/b 300 3\n", "rawframe_list"),
        ("a/b 300\n", "rawframe_list"),
        ("a/b.mp4 fn 3\n", "slowfast_csv"),
        ("a/b.mp4 0 3\n", "slowfast_csv"),
    ],
)
def test_format_auto_detection(text: str, expected: str, tmp_path: Path):
    assert datasets.detect_format(text.splitlines(), "ann.txt") == expected
    spec = datasets.resolve_dataset(None, ann_file=write(tmp_path / "ann.txt", text))
    assert items(spec)[0].kind == ("rawframes" if expected == "rawframe_list" else "video")


def test_auto_detection_gives_up_clearly():
    with pytest.raises(DatasetError, match=r"^ann.txt:2: cannot tell the annotation format from 'a b c d'"):
        datasets.detect_format(["", "a b c d"], "ann.txt")


@pytest.mark.parametrize(
    "ann_format, bad_line, message",
    [
        ("video_list", "foo bar baz", "expected 'path label', got 'foo bar baz'" + "; " + datasets.SPACES_HINT),
        ("video_list", "a.mp4 three", "label must be an integer, got 'three'"),
        ("video_list", "a.mp4 -4", "label -4 is negative"),
        ("rawframe_list", "vid 10 1 2", "expected 'frame_dir total_frames label', got 'vid 10 1 2'" + "; " + datasets.SPACES_HINT),
        ("rawframe_list", "vid ten 1", "total_frames must be an integer, got 'ten'"),
        ("rawframe_list", "vid 0 1", "total_frames must be positive, got 0"),
        ("slowfast_csv", "a b c d", "expected 'path label' or 'path fn label', got 'a b c d'" + "; " + datasets.SPACES_HINT),
    ],
)
def test_malformed_lines_name_file_and_line(ann_format: str, bad_line: str, message: str, tmp_path: Path):
    good = "ok 10 1" if ann_format == "rawframe_list" else "ok.mp4 1"
    ann = write(tmp_path / "kinetics400_val_list_videos.txt", f"{good}\n{good}\n\n{bad_line}\n{good}\n")
    spec = DatasetSpec(name="t", ann_file=ann, ann_format=ann_format)
    with pytest.raises(DatasetError) as err:
        items(spec)
    assert str(err.value) == f"{ann}:4: {message}"


def test_label_out_of_range(tmp_path: Path):
    ann = write(tmp_path / "val.txt", "a.mp4 399\nb.mp4 400\n")
    spec = DatasetSpec(name="t", ann_file=ann, ann_format="video_list", label_map="k400")
    with pytest.raises(DatasetError) as err:
        items(spec)
    assert str(err.value) == f"{ann}:2: label 400 out of range for label map 'k400' (400 classes)"
    # Without a label map there is nothing to check against.
    assert [i.label for i in items(dataclasses.replace(spec, label_map=None))] == [399, 400]


def test_custom_label_map_must_not_have_gaps(tmp_path: Path):
    good = write(tmp_path / "labels.txt", "cat\ndog\r\nbird\n\n")
    assert datasets.read_label_map(good) == ["cat", "dog", "bird"]
    gappy = write(tmp_path / "gappy.txt", "cat\n\ndog\n")
    with pytest.raises(DatasetError, match=r"gappy.txt:2: empty line in label map"):
        datasets.read_label_map(gappy)


# --------------------------------------------------------------------------- S3 and prefix


def test_annotation_label_map_and_videos_on_s3(s3_env: str):
    base = f"s3://{s3_env}"
    storage.write_bytes(f"{base}/meta/labels.txt", b"cat\ndog\n")
    storage.write_bytes(f"{base}/meta/val.txt", b"x/1.mp4 1\nx/2.mp4 0\ny/3.mp4 2\n")
    spec = datasets.resolve_dataset(
        None, ann_file=f"{base}/meta/val.txt", data_root=f"{base}/videos", label_map=f"{base}/meta/labels.txt"
    )
    assert datasets.read_label_map(spec.label_map) == ["cat", "dog"]
    with pytest.raises(DatasetError, match=rf"^s3://{s3_env}/meta/val.txt:3: label 2 out of range"):
        items(spec)
    storage.write_bytes(f"{base}/meta/val.txt", b"x/1.mp4 1\nx/2.mp4 0\n")
    assert items(spec) == [
        VideoItem("x/1.mp4", f"{base}/videos/x/1.mp4", 1),
        VideoItem("x/2.mp4", f"{base}/videos/x/2.mp4", 0),
    ]


def test_prefix_listing_local(tmp_path: Path):
    for rel in ("b/2.avi", "a/1.mp4", "a/sub/3.MKV", "a/notes.txt", "c.webm", "d.mov", "e.m4v", "f.flv"):
        write(tmp_path / "videos" / rel, "x")
    spec = datasets.resolve_dataset(None, data_root=str(tmp_path / "videos"))
    found = items(spec)
    assert [i.key for i in found] == ["a/1.mp4", "a/sub/3.MKV", "b/2.avi", "c.webm", "d.mov", "e.m4v", "f.flv"]
    assert found[0] == VideoItem("a/1.mp4", str(tmp_path / "videos/a/1.mp4"), None, None, "video")


def test_prefix_listing_s3(s3_env: str):
    for key in ("clips/a/1.mp4", "clips/b.webm", "clips/readme.md", "clips-other/c.mp4", "d.mp4"):
        storage.write_bytes(f"s3://{s3_env}/{key}", b"x")
    for root in (f"s3://{s3_env}/clips", f"s3://{s3_env}/clips/"):
        found = items(datasets.resolve_dataset(None, data_root=root))
        assert [(i.key, i.uri) for i in found] == [
            ("a/1.mp4", f"s3://{s3_env}/clips/a/1.mp4"),
            ("b.webm", f"s3://{s3_env}/clips/b.webm"),
        ]
    whole_bucket = items(datasets.resolve_dataset(None, data_root=f"s3://{s3_env}"))
    assert [i.key for i in whole_bucket] == ["clips-other/c.mp4", "clips/a/1.mp4", "clips/b.webm", "d.mp4"]
