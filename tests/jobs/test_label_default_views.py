"""``label`` without ``--views`` labels with 10 views: its own default, not another subcommand's.

The subcommands used to share argparse actions, so benchmark's 30 became label's default (a
nightly run cost 3x, and a later ``--views 10`` relabelled every video). This runs the real
command, in-process on the session's local Ray, on real tiny videos.
"""

from __future__ import annotations

import json


import submit
from jobs.label import read_labels
from tests.jobs.labeljob import LABEL_TEST, write_label_videos


def test_label_without_views_records_10_views(tmp_path, ray_local, checkpoint, capfd):
    write_label_videos(tmp_path / "in", 2)
    output = tmp_path / "labels"
    code = submit.main(["label", "--input", str(tmp_path / "in"), "--output", str(output), "--model", LABEL_TEST.name,
                        "--checkpoint", checkpoint, "--quiet"])
    assert code == 0, capfd.readouterr().err
    table = read_labels(str(output))
    assert table.num_rows == 2 and table.column("error").null_count == 2
    assert set(table.column("views").to_pylist()) == {10}
    assert json.loads((output / "manifest.json").read_text())["views"] == 10
