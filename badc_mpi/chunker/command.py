"""``badc-mpi chunk ROOT --layout ...``: scan recordings, write a manifest of virtual chunks and the
chunk-status files, print a summary. The order keeps bad input from writing anything: options,
site table, names (every problem listed, exit 2), then headers, then the status files, then the
manifest (atomic, last). A recording that cannot be read is written as ``failed``, never dropped.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from dataclasses import dataclass, field

from badc_mpi.chunker.bounds import MIN_CHUNK_MS
from badc_mpi.chunker.plan import RecordingPlan, name_recordings, plan_recording, same_instants
from badc_mpi.chunker.write import check_status_owners, write_manifest, write_status_files
from badc_mpi.errors import RecordingsError, UsageError
from badc_mpi.inputs.locations import default_locations, find_dataset_root
from badc_mpi.inputs.naming import CLOCK_ALIASES, CLOCKS, LAYOUTS, make_layout
from badc_mpi.inputs.recordings import find_recordings, probe
from badc_mpi.inputs.sites import load_site_table, zone_or_error

MAX_LISTED = 50

CHUNK_EPILOG = """\
layouts (where and when from the path; docs/recordings.md):
  wildtrax            LOCATION_YYYYMMDD_HHMMSS.wav (location without '_'; '$' = GPS clock)
  wildlife-acoustics  PREFIX_0+1_YYYYMMDD_HHMMSS.wav (or _0_, _1_, SM5's _AC_, none)
  audiomoth           LOCATION/[YYYYMMDD/][DEVICEID_]YYYYMMDD_HHMMSS[T].WAV (location = the folder), UTC
                      unless the WAV header states the clock's zone
  lab                 STUDY/.../STATION/[A|B]/[Data]/..._YYYYMMDD_HHMMSS.wav (BAR-LT: ...T050000-0600...)
  'REGEX'             a Python regular expression searched in the path under ROOT, with named
                      groups location, date, time (HHMMSS or HHMM; optional study_area, offset)
A folder that is a date (20240602, 2024-06-02) is never a location. Clocks (--clock): fixed
(default but audiomoth: one UTC offset per deployment, the site table's utc_offset or the zone's
at its first recording), civil (the zone's, following daylight saving), utc. A name with its own
offset (-0600) is exact. Two recordings of one location at one instant are refused.
Chunks are virtual (source_path = the recording, start_ms/end_ms = the slice); a last chunk
shorter than 3 s is merged into the one before. Recording ids: the path under ROOT without its
extension, '/' written '~'.
exit codes: 0 written; 1 written, but some recordings failed (listed; their status is 'failed');
2 bad options, site table or names, or two recordings of one location at one instant (each listed
with its fix; nothing written)"""


@dataclass(frozen=True)
class ChunkOptions:
    root: str
    layout: str
    chunk_s: float = 60.0
    overlap_s: float = 0.0
    sites: str | None = None
    out: str | None = None
    chunks_dir: str | None = None
    time_zone: str | None = None
    clock: str | None = None
    skip_unmatched: bool = False
    force: bool = False


@dataclass
class ChunkResult:
    manifest_path: str
    chunks_dir: str
    recordings: int = 0
    chunks: int = 0
    failed: list[RecordingPlan] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  #: --skip-unmatched: problem lines
    notes: Counter[str] = field(default_factory=Counter)  #: DST resolutions
    no_zone: list[str] = field(default_factory=list)
    clock_notes: list[str] = field(default_factory=list)  #: "path: what its header said of its clock"
    clocks: Counter[str] = field(default_factory=Counter)  #: how the times were read -> recordings
    seconds: float = 0.0


def add_chunk_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "chunk",
        help="scan recordings (WAV/FLAC) into a manifest of virtual chunks with place and time",
        description="Scan ROOT (a folder or DataLad dataset) for .wav/.flac recordings, read place and time "
        "from their paths (--layout) and a site table, and write a manifest of virtual chunks plus "
        "<chunks-dir>/<recording_id>/.chunk_status.json. No audio is written.",
        epilog=CHUNK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("root", metavar="ROOT", help="folder of recordings (a DataLad dataset, or a folder in one)")
    p.add_argument("--layout", required=True, metavar="LAYOUT", help=f"{' | '.join(LAYOUTS)} | 'REGEX'")
    p.add_argument("--chunk-s", type=float, default=60.0, metavar="S", help="chunk length in seconds (default 60)")
    p.add_argument("--overlap-s", type=float, default=0.0, metavar="S", help="overlap between chunks (default 0)")
    p.add_argument("--sites", metavar="CSV", help="site table: location,latitude,longitude,region,time_zone,study_area")
    p.add_argument(
        "--time-zone", metavar="ZONE", help="IANA zone for locations the site table gives none (e.g. America/Edmonton)"
    )
    p.add_argument(
        "--clock",
        choices=(*CLOCKS, *CLOCK_ALIASES),
        help="the clock names are written on: fixed (one UTC offset per deployment), civil (follows DST; "
        "'local' is its old name) or utc (default: fixed, audiomoth utc)",
    )
    p.add_argument(
        "--out", metavar="CSV", help="manifest path (default: <dataset>/manifests/<ROOT name>.csv, else ./manifests/...)"
    )
    p.add_argument(
        "--chunks-dir", metavar="DIR", help="where .chunk_status.json files go (default: as `badc-mpi run` reads them)"
    )
    p.add_argument(
        "--skip-unmatched", action="store_true", help="list files whose names give no place or time, and leave them out"
    )
    p.add_argument("--force", action="store_true", help="replace an existing manifest")
    p.add_argument(
        "--no-record-datalad",
        dest="record_datalad",
        action="store_false",
        help="inside a DataLad dataset, do not `datalad save` the manifest and chunk-status files (saved by default, "
        "so that `make infer` finds the dataset clean)",
    )
    return p


def options_from_args(args: argparse.Namespace) -> ChunkOptions:
    return ChunkOptions(
        root=args.root,
        layout=args.layout,
        chunk_s=args.chunk_s,
        overlap_s=args.overlap_s,
        sites=args.sites,
        out=args.out,
        chunks_dir=args.chunks_dir,
        time_zone=args.time_zone,
        clock=args.clock,
        skip_unmatched=args.skip_unmatched,
        force=args.force,
    )


def default_manifest_path(root: str) -> str:
    """``<dataset>/manifests/<name>.csv`` inside a DataLad dataset, else ``./manifests/<name>.csv``."""
    root = os.path.abspath(root)
    dataset = find_dataset_root(root)
    name = os.path.basename(root.rstrip(os.sep)) or "recordings"
    return os.path.join(dataset or os.getcwd(), "manifests", f"{name}.csv")


def _check(options: ChunkOptions) -> tuple[int, int]:
    if not os.path.isdir(options.root):
        raise UsageError(f"ROOT {options.root}: no such folder", fix="give the folder that holds the recordings")
    if not options.chunk_s * 1000 >= MIN_CHUNK_MS:
        raise UsageError(f"--chunk-s {options.chunk_s:g} is shorter than HawkEars' 3 s", fix="use 3 or more (60 is usual)")
    if not 0 <= options.overlap_s < options.chunk_s:
        raise UsageError(f"--overlap-s {options.overlap_s:g} must be in 0..--chunk-s", fix="use e.g. 0 or 3")
    chunk_ms, overlap_ms = round(options.chunk_s * 1000), round(options.overlap_s * 1000)
    if abs(chunk_ms - options.chunk_s * 1000) > 1e-6 or abs(overlap_ms - options.overlap_s * 1000) > 1e-6:
        raise UsageError("--chunk-s and --overlap-s are kept in whole milliseconds", fix="give at most 3 decimals")
    return chunk_ms, overlap_ms


def run_chunk(options: ChunkOptions) -> ChunkResult:
    """The whole command (RecordingsError or UsageError, with fixes, before anything is written)."""
    started = time.perf_counter()
    chunk_ms, overlap_ms = _check(options)
    layout = make_layout(options.layout, options.clock)
    sites = load_site_table(options.sites) if options.sites else None
    zone = zone_or_error(options.time_zone, "--time-zone") if options.time_zone else None
    root = os.path.abspath(options.root)
    manifest = os.path.abspath(options.out) if options.out else default_manifest_path(root)
    if os.path.exists(manifest) and not options.force:
        raise UsageError(f"manifest {manifest} exists", fix="pass --force to replace it, or --out another path")
    chunks_dir = default_locations(manifest, chunks_dir=options.chunks_dir).chunks_dir
    found = find_recordings(root, dataset_root=find_dataset_root(root) == root)
    if not found:
        raise RecordingsError(f"no .wav or .flac files under {root}", fix="point ROOT at the recordings (annexed files count)")
    naming = name_recordings(found, layout, sites, zone, options.sites or "")
    if naming.problems and not options.skip_unmatched:
        raise RecordingsError(
            f"{len(naming.problems)} of {len(found)} recordings give no usable place, time or id under --layout {options.layout}",
            fix="fix each file as its line says, or pass --skip-unmatched to leave them out (listed)",
            problems=naming.problems,
        )
    plans = [plan_recording(named, probe(named.found), chunk_ms, overlap_ms) for named in naming.named]
    if not plans:
        raise RecordingsError("every recording was left out (--skip-unmatched)", fix="fix the names", problems=naming.problems)
    same = same_instants([p for p in plans if p.ok])
    if same:
        raise RecordingsError(
            f"{len(same)} place(s) hold two or more recordings of one location at one instant: they would be identical tasks",
            fix="tell them apart as each line says; nothing was written",
            problems=same,
        )
    result = ChunkResult(manifest, chunks_dir, recordings=len(plans), skipped=naming.problems, no_zone=naming.no_zone)
    result.failed = [p for p in plans if not p.ok]
    result.notes = Counter(p.named.when.note for p in plans if p.named.when.note)
    result.clock_notes = [f"{p.named.found.rel}: {p.clock_note}" for p in plans if p.clock_note]
    result.clocks = Counter(p.named.basis for p in plans if p.named.basis)
    check_status_owners(plans, chunks_dir)  # before anything is written
    write_status_files(plans, chunks_dir, manifest_path=manifest, chunk_s=options.chunk_s, overlap_s=options.overlap_s)
    result.chunks = write_manifest(manifest, plans, overlap_ms)
    result.seconds = time.perf_counter() - started
    return result


def format_summary(result: ChunkResult, limit: int = MAX_LISTED) -> str:
    """What was written, what failed (each with its reason), and what was resolved or left out."""
    ok = result.recordings - len(result.failed)
    lines = [
        f"chunk: {result.recordings} recording(s): {ok} chunked, {len(result.failed)} failed; "
        f"{result.chunks} chunk(s) in {result.seconds:.1f} s",
        f"  manifest      {result.manifest_path}",
        f"  chunk status  {result.chunks_dir}",
    ]
    if result.failed:
        lines.append(f"failed recordings (chunk status 'failed'; not in the manifest): {len(result.failed)}")
        lines += [f"  {p.named.found.rel}: {p.error}" for p in result.failed[:limit]]
        if len(result.failed) > limit:
            lines.append(f"  ... and {len(result.failed) - limit} more (their .chunk_status.json say why)")
    if result.skipped:
        lines.append(f"left out (--skip-unmatched): {len(result.skipped)}")
        lines += [f"  {line}" for line in result.skipped[:limit]]
        if len(result.skipped) > limit:
            lines.append(f"  ... and {len(result.skipped) - limit} more")
    if result.clocks:
        shown = "; ".join(f"{basis} ({n})" for basis, n in sorted(result.clocks.items()))
        lines.append(f"clocks (docs/recordings.md, Clocks): {shown}")
    for note, count in sorted(result.notes.items()):
        rule = "first occurrence (daylight time)" if note == "ambiguous" else "offset before the change (standard time)"
        lines.append(f"note: {count} recording(s) start at a local time that is {note} (DST change): read as the {rule}")
    if result.clock_notes:
        lines.append(f"note: {len(result.clock_notes)} recording(s) whose WAV header disagrees on the clock:")
        lines += [f"  {line}" for line in result.clock_notes[:limit]]
        if len(result.clock_notes) > limit:
            lines.append(f"  ... and {len(result.clock_notes) - limit} more")
    if result.no_zone:
        shown = ", ".join(result.no_zone[:10]) + (" ..." if len(result.no_zone) > 10 else "")
        lines.append(
            f"note: no time zone for {len(result.no_zone)} location(s) ({shown}): recording_start_utc or the local date "
            "stays empty; give time_zone (or utc_offset) in --sites, or --time-zone"
        )
    return "\n".join(lines)
