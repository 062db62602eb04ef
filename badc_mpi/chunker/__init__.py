"""``badc-mpi chunk``: recordings in, a manifest of virtual chunks out, with where and when.

``bounds.py`` (pure: slice bounds and the tail rule), ``plan.py`` (pure: recordings, names and
sites into per-recording plans and problems), ``write.py`` (the manifest and the chunk-status files),
``command.py`` (the command: arguments, the scan, the summary). docs/recordings.md.
"""
