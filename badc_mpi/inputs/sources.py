"""Audio sources: whether a chunk's input can be read (a light import: worker ranks use it)."""

from __future__ import annotations

import os


def input_problem(path: str) -> str | None:
    """Why an input file cannot be read, or None. A broken symlink is absent annexed content."""
    if os.path.islink(path) and not os.path.exists(path):
        return f"input not present: {path} is a symlink to absent (annexed) content; run `datalad get` on it"
    if not os.path.exists(path):
        return f"input file not found: {path}"
    if not os.path.isfile(path):
        return f"input is not a file: {path}"
    if not os.access(path, os.R_OK):
        return f"input file not readable: {path}"
    return None
