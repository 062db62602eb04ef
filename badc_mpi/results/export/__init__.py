"""An aggregate into the files other tools read: WildTrax tags and tasks (``wildtrax``), Raven
selection tables and the lab's tables (``raven``), detection histories (``histories``); recordings'
places and times (``meta``), Parquet streamed recording by recording through DuckDB (``stream``),
files staged then moved into place (``staging``), the export itself (``write``) and its options
(``arguments``). Imports ``results.aggregate``, never ``results.bundle``.
"""
