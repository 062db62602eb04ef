"""``badc-mpi orchestrate``: plan a dataset's manifests as one queue, then run it here, write a
SLURM batch script for it, or submit that script; DataLad records what ran.

``plan.py`` (manifests, chunk status, done/remaining from earlier runs; the table, CSV, JSON),
``sbatch.py`` (the batch script: a pure function of the plan and options), ``datalad.py``
(``datalad run`` command lines; dataset checks), ``launch.py`` (the launcher, ``sbatch`` through
one wrapper), ``command.py`` (the subcommand's arguments and its thin shell).
"""
