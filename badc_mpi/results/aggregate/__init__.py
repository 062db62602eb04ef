"""Runs into one Parquet dataset (``detections``, ``chunks``, ``runs``, ``attempts``): which runs
and their files (``runs``), which result counts per chunk (``verdicts``, pure), the detection
readers per output layout (``sources``, ``store_source``, ``readers``), Arrow schemas and pure
conversions (``schema``), absolute times (``times``), the chunk-overlap merge (``overlap``), the
writer (``dataset``) and where aggregates live (``folders``). The bottom of ``results/``: it imports
neither ``export`` nor ``bundle``.
"""
