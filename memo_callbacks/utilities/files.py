"""Where the callbacks write their files: a folder of their own under the run's log folder, never over others' files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pytorch_lightning.utilities import rank_zero_warn

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=-]*")


def check_plain_name(value: Any, name: str) -> str:
    """``value`` when it is a plain file or folder name: letters, digits, ``_ . = -``, not starting with a dot.

    Names that become paths must not climb out of the log folder (``"../x"``), name a folder (``"a/b"``) or hide
    (``".x"``).
    """
    if not isinstance(value, str) or not _PLAIN_NAME.fullmatch(value):
        raise ValueError(
            f"`{name}` must be a plain name (letters, digits, '_', '.', '=', '-'; no path separators, not starting "
            f"with '.'), got {value!r}"
        )
    return value


def callback_dir(trainer: Any, folder: str) -> Path:
    """``<log dir>/<folder>``: the logger's log folder, or ``trainer.default_root_dir`` without a logger.

    ``trainer.log_dir`` is a broadcast under DDP: call this on every rank.
    """
    log_dir = trainer.log_dir or trainer.default_root_dir
    return Path(log_dir) / folder


def unclaimed_path(path: Path, written: set[Path]) -> Path:
    """``path``, or the first free ``<stem>-v1<suffix>``, ``-v2``, ... when ``path`` holds a file this callback did
    not write in this run (``written``): a callback never overwrites someone else's file. Warns when it renames."""
    candidate, version = path, 0
    while candidate.exists() and candidate.resolve() not in written:
        version += 1
        candidate = path.with_name(f"{path.stem}-v{version}{path.suffix}")
    if version:
        rank_zero_warn(f"{str(path)!r} exists and was not written by this run; writing {str(candidate)!r} instead")
    written.add(candidate.resolve())
    return candidate
