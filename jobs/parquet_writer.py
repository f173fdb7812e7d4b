"""The one Parquet writer every job uses: rows checked against a schema, zstd, written atomically.

A misspelt or forgotten column is caught here with a message naming it, instead of surfacing as
a confusing Arrow error or, worse, as a file with a silently missing column. The file is built
in memory and handed to ``x3d.storage.write_bytes``, so a reader (a resumed run, DuckDB,
``pyarrow.dataset``) sees a whole file or none, on disk and on S3 alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from x3d import storage

__all__ = ["check_rows", "write_parquet", "write_table"]


def check_rows(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> None:
    """Every row names only the schema's columns and fills every non-nullable one."""
    columns = frozenset(schema.names)
    required = [f.name for f in schema if not f.nullable]
    for i, row in enumerate(rows):
        unknown = set(row) - columns
        if unknown:
            raise ValueError(f"row {i}: unknown column(s) {', '.join(sorted(unknown))}")
        missing = [name for name in required if row.get(name) is None]
        if missing:
            raise ValueError(f"row {i}: missing value for {', '.join(missing)}")


def write_parquet(uri: str, rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> str:
    """Write ``rows`` as one Parquet file at ``uri`` (missing nullable columns are null)."""
    check_rows(rows, schema)
    write_table(uri, pa.Table.from_pylist(list(rows), schema=schema), schema)
    return uri


def write_table(
    uri: str, data: pa.Table | Iterable[pa.RecordBatch], schema: pa.Schema, row_group_size: int | None = None
) -> tuple[int, int]:
    """Write a table, or a stream of record batches (a compaction's), as one Parquet file at
    ``uri``; returns (rows, bytes). Every batch must have ``schema``'s columns and types."""
    batches = data.to_batches() if isinstance(data, pa.Table) else data
    sink = pa.BufferOutputStream()
    rows = 0
    with pq.ParquetWriter(sink, schema, compression="zstd", use_dictionary=_dictionary_columns(schema)) as writer:
        for batch in batches:
            if not batch.schema.equals(schema):
                raise ValueError(f"{uri}: batch columns {batch.schema.names} do not match the schema {schema.names}")
            writer.write_batch(batch, row_group_size=row_group_size)
            rows += batch.num_rows
    buffer = sink.getvalue()
    storage.write_bytes(uri, memoryview(buffer))  # no copy
    return rows, buffer.size


#: columns of distinct floats, for which a dictionary only adds bytes: a shard's distinct
#: values all go into one dictionary page (bench/RESULTS.md, "Feature vectors")
_NO_DICTIONARY = ("features",)


def _dictionary_columns(schema: pa.Schema) -> bool | list[str]:
    """Parquet's dictionary encoding for every column but ``_NO_DICTIONARY``'s, by leaf path
    (``labels.list.element``: how the writer names a list's values)."""
    if not any(name in schema.names for name in _NO_DICTIONARY):
        return True
    nested = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
    return [f"{f.name}.list.element" if any(t(f.type) for t in nested) else f.name for f in schema if f.name not in _NO_DICTIONARY]

