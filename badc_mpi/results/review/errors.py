"""The review pack's one exception: bad input, named with its file and row and the fix (exit 2)."""

from __future__ import annotations

from badc_mpi.errors import BadcError


class ReviewError(BadcError):
    """A review option or input file that cannot be used; nothing is written."""
