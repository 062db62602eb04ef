"""Readers of a run's results: ``badc-mpi monitor`` (telemetry, live).

``monitor_tail`` reads the telemetry JSONL incrementally and the summary's head (I/O);
``monitor_state`` parses blocks of lines and aggregates them (no I/O); ``monitor_view`` formats a
snapshot (pure); ``monitor`` is the loop that ties them together for the CLI.
"""
