"""``badc-mpi review``: a review pack of a bundle's detections (clips, spectrograms, review.csv,
Raven tables, review.html) under ``<bundle>/review/<round>/`` (docs/results.md, "Review")."""
