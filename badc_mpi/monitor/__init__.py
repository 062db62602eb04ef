"""``badc-mpi monitor``: the live view of a run, read from its telemetry and its summary's head by
any process while the run goes on (never by the run itself, never after-the-run aggregation).

``tail`` reads the telemetry JSONL incrementally and the summary's head (I/O); ``parse`` turns
blocks of lines into columns and ``state`` aggregates them into a ``Snapshot`` (no I/O); ``view``
formats a snapshot (pure); ``loop`` is the command's loop (once, or ``--follow``).
"""
