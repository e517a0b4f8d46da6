"""Files created the way the user expects: normal permissions, renamed into place."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def create_temp_beside(path: Path) -> tuple[int, str]:
    """Open a new, uniquely named temporary file beside ``path`` for writing: ``(fd, name)``.
    Created with mode 0o666 minus the umask, the permissions any file the user creates gets
    (``tempfile.mkstemp`` would make it 0600, and so the renamed file)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = str(path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.partial")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # pragma: no cover - a 48-bit random name taken
            continue
