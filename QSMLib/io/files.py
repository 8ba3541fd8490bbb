"""Files: written so that they appear complete or not at all, and their checksums.

An atomic write goes to a temporary file beside the target, then a rename.
Temporary files are created with the permissions any new file gets
(``0666`` less the process umask), not ``mkstemp``'s private ``0600``, so
that the results in a shared study folder are readable like the user's
other files.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Union


def new_file_mode() -> int:
    """Permission bits of a newly created file: ``0o666`` less the process umask."""
    try:
        with open("/proc/self/status") as status:  # Linux: read without changing it (thread-safe)
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)  # elsewhere the only way to read it is to set it, then put it back
    os.umask(umask)
    return 0o666 & ~umask


def temporary_beside(path: Path, suffix: str = ".tmp") -> Path:
    """Create an empty, closed temporary file in ``path``'s folder, with the usual permissions of a new file.

    Its name starts with ``.<name>.`` so that it is hidden and recognisable;
    the caller writes it and renames it onto ``path`` (``os.replace``) or
    removes it.
    """
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        os.chmod(temporary, new_file_mode())
    except BaseException:
        os.unlink(temporary)
        raise
    return Path(temporary)


def file_checksum(path: Union[str, Path]) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
