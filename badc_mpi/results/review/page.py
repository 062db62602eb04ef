"""``review.html``: one offline page per pack, opened from ``file://`` with no server (pure text).

Per species (a section each): every clip's player and spectrogram, score, place and local time,
buttons correct / wrong / unsure; progress per species and overall. Keys act on the current clip
(highlighted): ``c`` correct, ``w`` wrong, ``u`` unsure, ``j``/``k`` (or arrows) next/previous,
``space`` play/pause. Verdicts are kept in the browser's ``localStorage`` under the pack's id, so a
reload keeps them; "Export verdicts.csv" downloads ``detection_id,species_code,verdict`` (the
format ``badc-mpi calibrate`` reads); ``window.reviewVerdictsCsv()`` returns the same text.
Detection ids stay strings in the page (they pass 2^53).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

VERDICTS = ("correct", "wrong", "unsure")
KEYS = {"c": "correct", "w": "wrong", "u": "unsure"}

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
.item{display:flex;gap:1em;align-items:center;padding:.5em;border:2px solid transparent;border-radius:6px}
.item.current{border-color:#2a6fdb;background:#f2f7ff}
.item img{height:128px;max-width:480px}
.meta{min-width:16em;font-size:.9em}
.v button{margin:.1em;padding:.3em .7em}
.item[data-verdict=correct] .b-correct{background:#2e9d4b;color:#fff}
.item[data-verdict=wrong] .b-wrong{background:#c73737;color:#fff}
.item[data-verdict=unsure] .b-unsure{background:#d99a00;color:#fff}
.missing{color:#a33}
.progress{font-weight:normal;font-size:.85em;color:#555}
#bar{position:sticky;top:0;background:#fff;padding:.4em 0;border-bottom:1px solid #ddd}
"""

_SCRIPT = """
(function(){
const pack = JSON.parse(document.getElementById('pack-data').textContent);
const key = 'badc-mpi.review.' + pack.id;
let verdicts = {};
try { verdicts = JSON.parse(localStorage.getItem(key) || '{}'); } catch (e) { verdicts = {}; }
const items = Array.from(document.querySelectorAll('.item'));
let current = 0;
function save(){ localStorage.setItem(key, JSON.stringify(verdicts)); }
function paint(){
  items.forEach(function(el){ const v = verdicts[el.dataset.id]; if (v) el.dataset.verdict = v; else delete el.dataset.verdict; });
  let total = 0;
  document.querySelectorAll('section.species').forEach(function(sec){
    const its = sec.querySelectorAll('.item');
    let done = 0; its.forEach(function(el){ if (verdicts[el.dataset.id]) done++; });
    total += done;
    sec.querySelector('.progress').textContent = done + ' / ' + its.length + ' reviewed';
  });
  document.getElementById('overall').textContent = total + ' / ' + items.length + ' reviewed';
}
function focus(i){
  if (!items.length) return;
  current = Math.max(0, Math.min(items.length - 1, i));
  items.forEach(function(el, j){ el.classList.toggle('current', j === current); });
  items[current].scrollIntoView({block: 'nearest'});
}
function give(i, verdict){
  const el = items[i]; if (!el) return;
  verdicts[el.dataset.id] = verdict; save(); paint();
}
function csv(){
  const lines = ['detection_id,species_code,verdict'];
  items.forEach(function(el){
    const v = verdicts[el.dataset.id];
    if (v) lines.push([el.dataset.id, el.dataset.species, v].map(function(s){
      s = String(s); return /[",\\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; }).join(','));
  });
  return lines.join('\\n') + '\\n';
}
window.reviewVerdictsCsv = csv;
items.forEach(function(el, i){
  el.querySelectorAll('.v button').forEach(function(b){
    b.addEventListener('click', function(){ focus(i); give(i, b.dataset.verdict); });
  });
  el.addEventListener('click', function(){ focus(i); });
});
document.getElementById('export').addEventListener('click', function(){
  const url = URL.createObjectURL(new Blob([csv()], {type: 'text/csv'}));
  const a = document.createElement('a'); a.href = url; a.download = 'verdicts.csv';
  document.body.appendChild(a); a.click(); a.remove();
  setTimeout(function(){ URL.revokeObjectURL(url); }, 1000);
});
document.getElementById('clear').addEventListener('click', function(){
  if (confirm('Forget every verdict given on this page?')) { verdicts = {}; save(); paint(); }
});
const keyVerdicts = %(keys)s;
document.addEventListener('keydown', function(ev){
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const k = ev.key.toLowerCase();
  if (keyVerdicts[k]) { give(current, keyVerdicts[k]); focus(current + 1); ev.preventDefault(); }
  else if (k === 'j' || k === 'arrowdown') { focus(current + 1); ev.preventDefault(); }
  else if (k === 'k' || k === 'arrowup') { focus(current - 1); ev.preventDefault(); }
  else if (k === ' ') {
    const au = items[current] && items[current].querySelector('audio');
    if (au) { if (au.paused) au.play(); else au.pause(); }
    ev.preventDefault();
  }
});
paint(); focus(0);
document.body.dataset.ready = '1';
})();
"""


def _item(row: dict[str, Any]) -> str:
    e = html.escape
    did, species = str(row["detection_id"]), str(row["species_code"])
    meta = (
        f'<div class="meta"><b>score {float(row["score"]):.3f}</b><br>{e(str(row.get("location") or "?"))}'
        f"<br>{e(str(row.get('local_time') or '?'))}<br><small>id {e(did)}</small></div>"
    )
    if row.get("problem"):
        media = f'<div class="missing">clip missing: {e(str(row["problem"]))}</div>'
    else:
        media = (
            f'<img src="{e(str(row["image"]))}" alt="spectrogram {e(did)}" loading="lazy">'
            f'<audio controls preload="none" src="{e(str(row["clip"]))}"></audio>'
        )
    buttons = "".join(f'<button type="button" class="b-{v}" data-verdict="{v}" title="key {v[0]}">{v}</button>' for v in VERDICTS)
    return f'<div class="item" data-id="{e(did)}" data-species="{e(species)}">{meta}{media}<div class="v">{buttons}</div></div>'


def review_html(pack_id: str, title: str, rows: Sequence[dict[str, Any]], note: str = "") -> str:
    """The page for a pack's ``rows`` (review.csv's, in order; ``problem`` set for a missing clip)."""
    e = html.escape
    species: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        species.setdefault(str(row["species_code"]), []).append(row)
    sections = []
    for code, items in species.items():
        name = items[0].get("species_name") or ""
        sections.append(
            f'<section class="species" data-species="{e(code)}"><h2>{e(code)} {e(str(name))} '
            f'<span class="progress"></span></h2>{"".join(_item(r) for r in items)}</section>'
        )
    data = json.dumps({"id": pack_id}).replace("</", "<\\/")
    script = _SCRIPT % {"keys": json.dumps(KEYS)}
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title><style>{_STYLE}</style></head>
<body>
<h1>{e(title)}</h1>
<p>{e(note)}</p>
<p>Keys: <b>c</b> correct, <b>w</b> wrong, <b>u</b> unsure (then the next clip), <b>j</b>/<b>k</b> next/previous,
<b>space</b> play. Verdicts stay in this browser until exported.</p>
<div id="bar"><span id="overall"></span>
<button type="button" id="export">Export verdicts.csv</button>
<button type="button" id="clear">Forget verdicts</button></div>
{"".join(sections)}
<script type="application/json" id="pack-data">{data}</script>
<script>{script}</script>
</body></html>
"""
