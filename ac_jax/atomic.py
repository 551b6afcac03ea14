"""Whole-or-nothing file writes, for every file a killed job must find intact or absent."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: bytes | str, durable: bool = False) -> None:
    """Writes `data` to `path` through a sibling `.tmp` file and a rename: a kill mid-write
    leaves the old file (or none), never half of one. `durable` also flushes the bytes to disk
    before the rename, for checkpoints that must survive a machine losing power."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # an error (not a kill) leaves no scratch file behind either
        tmp.unlink(missing_ok=True)
        raise
