"""Files erpsync writes hold ERP data, shop errors and positions: they are created readable by their
owner only (files 0600, directories erpsync creates 0700), whatever the process umask.

Files are created with an explicit mode before the library that fills them opens them (SQLite: its -wal
and -shm files take the database file's mode). For a library that insists on creating its files itself
(DuckDB), ``private_umask`` tightens the process umask while it does: process-wide, so files other
threads create meanwhile are private too — stricter, never looser.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: str | Path) -> Path:
    """``path`` and any missing parent created 0700 (existing directories are left as they are)."""
    p = Path(path)
    missing: list[Path] = []
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=DIR_MODE)
        with contextlib.suppress(OSError):
            os.chmod(d, DIR_MODE)  # mkdir's mode is masked by the umask
    return Path(path)


def create_private(path: str | Path) -> bool:
    """Create ``path`` empty with mode 0600 if it does not exist (True when it was created here); its
    directory is created 0700 if missing."""
    p = Path(path)
    private_dir(p.parent)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def make_private(path: str | Path) -> None:
    """Take group and other permissions off an existing file erpsync wrote (one a library created)."""
    with contextlib.suppress(FileNotFoundError):
        mode = os.stat(path).st_mode & 0o777
        if mode & 0o077:
            os.chmod(path, mode & 0o700)


_umask_lock = threading.Lock()
_umask_depth = 0
_umask_saved = 0


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Within: files and directories are created without group or other permissions."""
    global _umask_depth, _umask_saved
    with _umask_lock:
        if _umask_depth == 0:
            _umask_saved = os.umask(0o077)
            os.umask(_umask_saved | 0o077)
        _umask_depth += 1
    try:
        yield
    finally:
        with _umask_lock:
            _umask_depth -= 1
            if _umask_depth == 0:
                os.umask(_umask_saved)
