"""A bundle: an aggregate plus ``bundle.duckdb`` (constant SQL views, ``views``), quicklook CSVs,
``summary.json`` and ``report.html`` (``report``, its figures drawn by ``charts``), built by
``build`` (and its exports through ``results.export``); ``access.open_bundle`` reads one back.
The top of ``results/``.
"""
