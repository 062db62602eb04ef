"""JSON Lines, the format of telemetry and the resume ledger: one fast encoder, one torn-tail rule.

Writers append whole lines; a writer killed mid-write leaves an unterminated last line, which
every reader drops (:func:`complete_lines`) and may report. Nothing else is forgiven.
"""

from __future__ import annotations

import json
from typing import Any


def _unencodable(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
if _c_make_encoder is not None:
    # one C encoder, built once: json.dumps builds a new one per call, which costs more than
    # encoding a record (rank 0 encodes several records per chunk at >20,000 chunks/s)
    _iterencode = _c_make_encoder(
        None,
        _unencodable,
        json.encoder.c_encode_basestring,  # type: ignore[attr-defined]  # CPython's C helper; typeshed leaves it out
        None,
        ":",
        ",",
        False,
        False,
        True,
    )

    def dumps(record: Any) -> str:
        """Compact JSON, non-ASCII kept (no newline); the same text as ``json.dumps(...,
        ensure_ascii=False, separators=(",", ":"))``."""
        return "".join(_iterencode(record, 0))
else:  # pragma: no cover - CPython always has the C encoder
    _encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

    def dumps(record: Any) -> str:
        """Compact JSON, non-ASCII kept (no newline)."""
        return _encoder.encode(record)


def complete_lines(data: bytes) -> tuple[bytes, bool]:
    """``data`` up to and including its last newline, and whether a torn tail was cut off."""
    end = data.rfind(b"\n") + 1
    return data[:end], end < len(data)
