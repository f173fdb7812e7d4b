"""``--partition i/n``: one of n drivers that share one evaluate run on one cluster.

One driver schedules a few thousand videos a second (docs/scaling.md); a cluster that decodes
faster than that needs several. The run's shards are cut by position as always, and partition
``i`` of ``n`` scores only the shards whose index is ``i`` modulo ``n``: the partitions' shard
numbers are disjoint, so they all write into one ``predictions/`` folder and the output is the
one a single driver would have written.

Standard library only: the command line parses the flag with it before torch and Ray load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Partition", "parse_partition"]

_FORM = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True)
class Partition:
    index: int  # which one, from 0
    count: int  # of how many

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"a run splits into at least 1 partition, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"partition {self.index}/{self.count}: the index counts from 0 to {self.count - 1}")

    def owns(self, shard_index: int) -> bool:
        return shard_index % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_partition(text: str) -> Partition:
    """``"1/4"`` to ``Partition(1, 4)``; anything else is a ValueError that says what was expected."""
    match = _FORM.fullmatch(text)
    if not match:
        raise ValueError(f"expected I/N, partition I of N counted from 0 (0/4 ... 3/4), got {text!r}")
    return Partition(int(match.group(1)), int(match.group(2)))
