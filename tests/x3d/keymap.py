"""The X3D key map of tests/data/x3d-keymap.tsv: each tensor's name and shape in the three
published checkpoint layouts, read as data so the tests of the key filters do not share their rules."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

KEYMAP = Path(__file__).parents[1] / "data" / "x3d-keymap.tsv"
COLUMNS = ["mmaction2", "shape", "pyslowfast", "shape", "pytorchvideo", "shape"]


class KeyRow(NamedTuple):
    shape: tuple[int, ...]
    pyslowfast: str
    pyslowfast_shape: tuple[int, ...]
    pytorchvideo: str | None  # None: the PyTorchVideo hub layout has no such tensor
    pytorchvideo_shape: tuple[int, ...] | None


def _shape(text: str) -> tuple[int, ...] | None:
    if text == "-":
        return None
    return () if text == "scalar" else tuple(int(size) for size in text.split("x"))


def load_keymap() -> dict[str, KeyRow]:
    """MMAction2 key (ours) -> its row, in the order of the module tree."""
    rows = [line.split("\t") for line in KEYMAP.read_text().splitlines() if line and not line.startswith("#")]
    assert rows[0] == COLUMNS, f"{KEYMAP}: unexpected columns {rows[0]}"
    table = {}
    for mm, shape, sf, sf_shape, ptv, ptv_shape in rows[1:]:
        table[mm] = KeyRow(_shape(shape), sf, _shape(sf_shape), None if ptv == "-" else ptv, _shape(ptv_shape))
    return table
