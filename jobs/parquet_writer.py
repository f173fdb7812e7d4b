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
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        for batch in batches:
            if not batch.schema.equals(schema):
                raise ValueError(f"{uri}: batch columns {batch.schema.names} do not match the schema {schema.names}")
            writer.write_batch(batch, row_group_size=row_group_size)
            rows += batch.num_rows
    buffer = sink.getvalue()
    storage.write_bytes(uri, memoryview(buffer))  # no copy
    return rows, buffer.size
