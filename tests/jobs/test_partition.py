"""``--partition i/n`` as a value (jobs.partition), without Ray: its form, and that the
partitions of a run own every shard exactly once. The runs themselves are in test_evaluate.py."""

from __future__ import annotations

import pytest

from jobs.partition import Partition, parse_partition


def test_parse_reads_i_of_n():
    assert parse_partition("0/4") == Partition(0, 4)
    assert parse_partition(" 3 / 4 ") == Partition(3, 4)
    assert parse_partition("0/1") == Partition(0, 1)
    assert str(parse_partition("2/5")) == "2/5"


@pytest.mark.parametrize("text, words", [("4/4", "from 0 to 3"), ("1/0", "at least 1"), ("-1/2", "expected I/N"), ("1", "expected I/N"),
                                         ("1/2/3", "expected I/N"), ("", "expected I/N"), ("x/2", "expected I/N")])
def test_parse_refuses_what_names_no_partition(text: str, words: str):
    with pytest.raises(ValueError, match=words):
        parse_partition(text)


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_the_partitions_own_every_shard_once(count: int):
    parts = [Partition(i, count) for i in range(count)]
    for shard in range(50):
        assert sum(p.owns(shard) for p in parts) == 1, shard
    assert [s for s in range(10) if parts[-1].owns(s)] == list(range(count - 1, 10, count))
