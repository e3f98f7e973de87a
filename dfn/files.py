"""All-or-nothing writes: every file the project writes (checkpoints, metrics.json, data caches,
converted videos, figures) is written to a temporary file beside it, flushed to disk and renamed,
so that a kill or a full disk while writing leaves the previous file whole, and nothing under the
real name that is not complete."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write the new file to; it replaces ``path`` when the
    block ends without an error, and is removed otherwise. A write that the disk refuses (full,
    read-only, not allowed) raises an OSError that names ``path``, however deep inside a library
    the write failed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:
        disk = next((c for c in causes(e) if isinstance(c, OSError) and c.errno), None)
        if disk is None:
            raise
        raise OSError(disk.errno, disk.strerror, str(path)) from e
    finally:
        tmp.unlink(missing_ok=True)


def causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the errors it was raised from or while handling (a library that turns an
    OSError into its own error keeps it as the cause or the context)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path``, all or nothing."""
    with replacing(path) as tmp:
        tmp.write_text(text)
    return Path(path)
