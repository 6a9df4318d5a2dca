"""The one query engine for data of any size: an embedded DuckDB with a memory limit and a spill folder.

DuckDB runs the split and the local-file fetch as SQL, out of core: past `memory_limit_mb` it spills to a
temporary folder beside the output (same disk as the result, removed afterwards), so the peak memory is the
limit plus the Python process, whatever the number of rows. No extension is ever loaded (no httpfs, no hf://):
`autoinstall_known_extensions` and `autoload_known_extensions` are off, so a query that would need one fails
instead of downloading it.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def connect(memory_limit_mb: int, threads: int | None, spill_parent: str | os.PathLike) -> Iterator:
    """An in-memory DuckDB that spills to a fresh folder under `spill_parent`; both are gone on exit."""
    import duckdb

    spill_parent = Path(spill_parent)
    spill_parent.mkdir(parents=True, exist_ok=True)
    spill = Path(tempfile.mkdtemp(prefix=".duckdb-spill-", dir=spill_parent))
    config = {"memory_limit": f"{int(memory_limit_mb)}MB", "temp_directory": str(spill),
              "preserve_insertion_order": False, "autoinstall_known_extensions": False,
              "autoload_known_extensions": False}
    if threads:
        config["threads"] = int(threads)
    con = duckdb.connect(":memory:", config=config)
    try:
        yield con
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


def sql_str(value: str) -> str:
    """A SQL string literal (for paths and names in COPY/FROM, where DuckDB takes no bound parameters)."""
    return "'" + str(value).replace("'", "''") + "'"
