"""The quarantine rule under a real ``mpiexec -n 3`` and the command runner (fake HawkEars): a block
of bad chunks is the chunks' fault (they fail with their class, no rank is set aside, the good
chunks all run, exit 1); a rank whose failed chunks succeed elsewhere is still set aside.

Before this rule every failure but ``input`` counted against the rank that saw it: a damaged
recording's 20 chunks quarantined every rank ("0 succeeded, 20 not finished", exit 75), and every
resume stopped the same way.
"""

from __future__ import annotations

import json

from test_hardening import command_args, make_dataset, only_telemetry

from helpers import FAKE_CMD, run_badc, sidecar

BAD_RECORDINGS = ("rec001", "rec002", "rec003", "rec004", "rec005")  # 20 chunks in a row


def _finals(events: list[dict]) -> dict[str, dict]:
    return {e["chunk_id"]: e for e in events if e["event"] in ("success", "failure")}


def test_a_block_of_bad_chunks_fails_them_and_quarantines_no_rank(tmp_path):
    manifest = make_dataset(tmp_path, 7, 4, seconds=0.2)
    damaged = f"{FAKE_CMD} --fail-on {','.join(r + '_' for r in BAD_RECORDINGS)}"
    proc = run_badc(command_args(manifest, tmp_path, "--max-retries", "2", cmd=damaged), np=3)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]  # some chunks failed: not 75
    tfile, events = only_telemetry(tmp_path)
    finals = _finals(events)
    assert len(finals) == 28
    bad = {k: e for k, e in finals.items() if k.split("_")[0] in BAD_RECORDINGS}
    assert len(bad) == 20 and all(e["event"] == "failure" and e["failure_class"] == "exit" for e in bad.values())
    assert all(e["event"] == "success" for k, e in finals.items() if k not in bad)  # good chunks all ran
    ranks_tried = {k: {e["rank"] for e in events if e.get("chunk_id") == k and e["event"] in ("retry", "failure")} for k in bad}
    assert all(len(r) >= 2 for r in ranks_tried.values()), ranks_tried  # each retried on another rank
    summary = json.loads(sidecar(tfile, ".summary.json").read_text())
    assert summary["state"] == "finished" and summary["counts"]["failed"] == 20 and summary["counts"]["success"] == 8
    assert {w["status"] for w in summary["workers"].values()} == {"ok"}
    assert "quarantined" not in proc.stdout and "no rank is left" not in proc.stdout


def test_a_broken_rank_among_bad_chunks_is_still_set_aside(tmp_path):
    manifest = make_dataset(tmp_path, 10, 4, seconds=0.2)  # 20 good chunks after the bad block: rank 2 fails some
    cmd = f"{FAKE_CMD} --fail-on {','.join(r + '_' for r in BAD_RECORDINGS)} --fail-if-output-contains=-r2/"
    proc = run_badc(command_args(manifest, tmp_path, "--max-retries", "2", "--quarantine-after", "2", cmd=cmd), np=3)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    tfile, events = only_telemetry(tmp_path)
    finals = _finals(events)
    assert len(finals) == 40
    assert all((e["event"] == "failure") == (k.split("_")[0] in BAD_RECORDINGS) for k, e in finals.items())
    assert not any(e.get("rank") == 2 and e["event"] == "success" for e in events)
    workers = json.loads(sidecar(tfile, ".summary.json").read_text())["workers"]
    status = {w["rank"]: w for w in workers.values()}
    assert status[0]["status"] == status[1]["status"] == "ok"
    assert status[2]["status"] == "quarantined" and "succeeded on other ranks" in status[2]["note"]
