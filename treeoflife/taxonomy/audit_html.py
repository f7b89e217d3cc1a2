"""`reports/audit.html`: the audit figures as one self-contained page of plotly plots.

A pure function of the audit JSON (`audit.audit_catalog`): the page shows exactly what the
JSON holds. plotly.js is inlined (no CDN), so the page works offline and can be mailed.
"""

from __future__ import annotations

import html
import json

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from treeoflife.workspace import RANKS

STATUS_COLOURS = {
    "resolved": "#2a9d8f",
    "partial": "#e9c46a",
    "ambiguous": "#f4a261",
    "unresolved": "#e76f51",
    "not-run": "#adb5bd",
}
PATH_SEPARATOR = " › "

# Runs before anything else: any script error or rejected promise (plotly's included) is
# shown on the page and counted on <html data-tol-errors>, which the browser test reads.
ERROR_TRAP_JS = """
window.tolErrors = [];
function tolReport(message) {
  window.tolErrors.push(String(message));
  document.documentElement.setAttribute('data-tol-errors', String(window.tolErrors.length));
  var box = document.getElementById('tol-errors');
  if (box) { box.hidden = false; box.textContent = window.tolErrors.join('\\n'); }
}
window.addEventListener('error', function (e) {
  tolReport('error: ' + (e.message || e.type) + (e.filename ? ' (' + e.filename + ':' +
            e.lineno + ')' : ''));
});
window.addEventListener('unhandledrejection', function (e) {
  tolReport('unhandled rejection: ' + ((e.reason && e.reason.stack) || e.reason));
});
"""

# Draws every figure; <html data-tol-plots> says how many rendered.
RENDER_JS = """
(function () {
  var ids = Object.keys(TOL_FIGURES), rendered = 0;
  var config = {responsive: true, displaylogo: false};
  var jobs = ids.map(function (id) {
    try {
      var figure = TOL_FIGURES[id];
      return Plotly.newPlot(id, figure.data, figure.layout || {}, config).then(function () {
        rendered += 1;
      }, function (err) { tolReport('plot ' + id + ': ' + ((err && err.stack) || err)); });
    } catch (err) {
      tolReport('plot ' + id + ': ' + ((err && err.stack) || err));
      return Promise.resolve();
    }
  });
  Promise.all(jobs).then(function () {
    document.documentElement.setAttribute('data-tol-plots', String(rendered));
  });
})();
"""

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
.note { color: #555; } .plot { width: 100%; min-height: 460px; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
#tol-errors { background: #fdd; color: #900; padding: 1em; white-space: pre-wrap; }
.cards { display: flex; flex-wrap: wrap; gap: 1em; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 1em; min-width: 10em; }
.card b { display: block; font-size: 1.5em; }
"""


def _esc(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list | tuple):
        return html.escape(", ".join("–" if v is None else str(v) for v in value))
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list], empty: str = "none") -> str:
    if not rows:
        return f"<p class='note'>{html.escape(empty)}</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='n'>{_esc(v)}</td>" if isinstance(v, int | float) else f"<td>{_esc(v)}</td>"
            for v in row
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "–"


# ---------------------------------------------------------------- figures


def sunburst_figure(tree: dict) -> go.Figure:
    """Kingdom → family sunburst (click a ring to zoom), as the TreeOfLife-10M visuals."""
    values: dict[str, int] = {}
    parents: dict[str, str] = {}
    labels: dict[str, str] = {}
    for row in tree["lineages"]:
        *path, records = row
        for depth in range(len(path)):
            node = PATH_SEPARATOR.join(path[: depth + 1])
            values[node] = values.get(node, 0) + records
            parents[node] = PATH_SEPARATOR.join(path[:depth])
            labels[node] = path[depth]
    ids = list(values)
    figure = go.Figure(
        go.Sunburst(
            ids=ids,
            labels=[labels[i] for i in ids],
            parents=[parents[i] for i in ids],
            values=[values[i] for i in ids],
            branchvalues="total",
            maxdepth=3,
            hovertemplate="%{id}<br>%{value:,} images<extra></extra>",
        )
    )
    note = ""
    if tree["truncated_lineages"]:
        note = (
            f" (largest {len(tree['lineages']):,} of {tree['lineages_total']:,} paths; "
            f"{tree['truncated_records']:,} images in smaller ones not drawn)"
        )
    figure.update_layout(
        title=f"Images by kingdom › phylum › class › order › family{note}",
        height=700,
        margin={"t": 60, "l": 0, "r": 0, "b": 0},
    )
    return figure


def rank_source_figure(by_source: dict) -> go.Figure:
    """Images with a known name at each rank, one bar group per rank, one colour per source."""
    figure = go.Figure(
        [
            go.Bar(name=source, x=list(RANKS), y=[group["ranks"][r] for r in RANKS])
            for source, group in by_source.items()
        ]
    )
    figure.update_layout(
        title="Images with a known name, per rank and source",
        barmode="group",
        yaxis_title="images",
    )
    return figure


def long_tail_figure(long_tail: dict) -> go.Figure:
    bins = long_tail["log2_bins"]
    labels = [
        str(b["images_from"])
        if b["images_from"] == b["images_to"]
        else f"{b['images_from']}–{b['images_to']}"
        for b in bins
    ]
    figure = go.Figure(
        go.Bar(
            x=labels,
            y=[b["species"] for b in bins],
            customdata=[b["images"] for b in bins],
            hovertemplate="%{x} images: %{y:,} species (%{customdata:,} images)<extra></extra>",
        )
    )
    figure.update_layout(
        title=(
            f"Images per species (long tail): {long_tail['species']:,} species, median "
            f"{long_tail['median'] or 0}, {long_tail['singletons']:,} with one image"
        ),
        xaxis_title="images per species (log2 bins)",
        yaxis_title="species",
        yaxis_type="log",
    )
    return figure


def status_figure(by_source: dict) -> go.Figure:
    sources = list(by_source)
    figure = go.Figure(
        [
            go.Bar(
                name=status,
                x=sources,
                y=[by_source[s]["status"][status] for s in sources],
                marker_color=colour,
            )
            for status, colour in STATUS_COLOURS.items()
            if any(by_source[s]["status"][status] for s in sources)
        ]
    )
    figure.update_layout(title="Resolution status by source", barmode="stack", yaxis_title="images")
    return figure


def kingdom_share_figure(by_kingdom: dict) -> go.Figure:
    kingdoms = list(by_kingdom)
    figure = go.Figure(
        go.Bar(
            x=kingdoms,
            y=[100 * by_kingdom[k]["share_resolved_to_species"] for k in kingdoms],
            customdata=[by_kingdom[k]["records"] for k in kingdoms],
            hovertemplate="%{x}: %{y:.1f}% of %{customdata:,} images<extra></extra>",
        )
    )
    figure.update_layout(
        title="Share of images resolved to species, per kingdom",
        yaxis_title="% of images",
        yaxis_range=[0, 100],
    )
    return figure


def audit_figures(figures: dict) -> dict[str, go.Figure]:
    """The plots of the page, by element id."""
    return {
        "plot-taxonomy": sunburst_figure(figures["taxonomy_tree"]),
        "plot-rank-source": rank_source_figure(figures["by_source"]),
        "plot-long-tail": long_tail_figure(figures["images_per_species"]),
        "plot-status": status_figure(figures["by_source"]),
        "plot-kingdom-share": kingdom_share_figure(figures["by_kingdom"]),
    }


# ---------------------------------------------------------------- sections


def _summary(figures: dict) -> str:
    totals = figures["totals"]
    cards = [
        ("images", f"{totals['records']:,}"),
        ("sources", f"{totals['sources']:,}"),
        ("species", f"{totals['distinct_species']:,}"),
        ("resolved to species", _pct(totals["resolved_to_species"], totals["records"])),
        ("kingdom names as given", str(figures["kingdoms"]["source_given_names"])),
        ("suspected misspellings", f"{figures['misspelling_suspects']['pairs_total']:,}"),
    ]
    body = "".join(f"<div class='card'><b>{v}</b>{html.escape(k)}</div>" for k, v in cards)
    rows = [
        [rank, info["records"], _pct(info["records"], totals["records"]), info["distinct_names"],
         info["distinct_lineages"]]
        for rank, info in figures["ranks"].items()
    ]  # fmt: skip
    ranks = _table(
        ["rank", "images with name", "share", "distinct names", "distinct lineages"], rows
    )
    return f"<div class='cards'>{body}</div><h3>Records and distinct taxa per rank</h3>{ranks}"


def _coverage(figures: dict, key: str, label: str) -> str:
    rows = []
    for name, group in figures[key].items():
        n = group["records"]
        rows.append(
            [name, n, group["distinct_species"], _pct(group["resolved_to_species"], n)]
            + [group["status"][s] for s in STATUS_COLOURS]
        )
    return _table([label, "images", "species", "resolved to species", *STATUS_COLOURS], rows)


def _candidates(candidates: object) -> str:
    """Resolve's candidate list, compact: names with their kingdom and family when given."""
    if not candidates:
        return ""
    if not isinstance(candidates, list):
        return json.dumps(candidates)[:300]
    shown = []
    for candidate in candidates[:10]:
        if isinstance(candidate, dict):
            label = candidate.get("name") or candidate.get("canonical_name") or ""
            where = [str(candidate[k]) for k in ("kingdom", "family") if candidate.get(k)]
            shown.append(f"{label} ({', '.join(where)})" if where else str(label or candidate))
        else:
            shown.append(str(candidate))
    return "; ".join(shown)


def _names(section: dict, what: str) -> str:
    explained = any("query" in n or "candidates" in n for n in section["names"])
    rows = [
        [n["name"], n["records"], n["sources"]]
        + ([n.get("query"), _candidates(n.get("candidates"))] if explained else [])
        for n in section["names"]
    ]
    headers = ["name", "images", "sources"] + (["query", "candidates"] if explained else [])
    intro = (
        f"<p>{section['names_total']:,} {what} names on {section['records']:,} images"
        f"{' (largest first)' if section['names'] else ''}.</p>"
    )
    return intro + _table(headers, rows)


def _conflicts(conflicts: dict) -> str:
    if not conflicts["available"]:
        return "<p class='note'>no taxa_conflicts table (run `tol taxa resolve`).</p>"
    parts = [
        f"<p>{conflicts['rows']:,} ranks where a source and its authority disagree, on "
        f"{conflicts['records']:,} images.</p>"
    ]
    for key in ("rank", "kind"):
        if f"by_{key}" in conflicts:
            rows = [[c[key], c["rows"], c["records"]] for c in conflicts[f"by_{key}"]]
            parts.append(_table([key, "conflicts", "images"], rows))
    if "top" in conflicts:
        rows = [
            [c["rank"], c["source_value"], c["authority_value"], c["rows"], c["records"]]
            for c in conflicts["top"]
        ]
        parts.append(_table(["rank", "source says", "authority says", "conflicts", "images"], rows))
    return "".join(parts)


def _methods_and_flags(figures: dict) -> str:
    methods = _table(["method", "images"], [list(i) for i in figures["methods"].items()])
    flags = _table(
        ["flag", "images"],
        [list(i) for i in figures.get("flags", {}).items()],
        empty="no flags recorded",
    )
    return methods + flags


def _yes_no(flags: list[bool]) -> str:
    return " / ".join("yes" if flag else "no" for flag in flags)


def _misspellings(section: dict) -> str:
    rows = [
        [p["name_a"], p["records_a"], p["name_b"], p["records_b"], p["differs"], p["distance"],
         p["similarity"], p["likely_correct"]]
        + ([_yes_no(p["in_authority"])] if "in_authority" in p else [])
        for p in section["pairs"]
    ]  # fmt: skip
    headers = ["name", "images", "near-identical name", "images", "differs in", "edits",
               "Jaro-Winkler", "likely correct"]  # fmt: skip
    if rows and len(rows[0]) > len(headers):
        headers.append("accepted by authority")
    return f"<p>{section['pairs_total']:,} suspected pairs.</p>" + _table(headers, rows)


def _kingdoms(section: dict) -> str:
    given = _table(
        ["kingdom (as given)", "images"], [list(i) for i in section["source_given"].items()]
    )
    resolved = _table(
        ["kingdom (audited)", "images"], [list(i) for i in section["resolved"].items()]
    )
    mapping = _table(
        ["as given", "audited", "images"],
        [[m["source_kingdom"], m["kingdom"], m["records"]] for m in section["mapping"]],
    )
    return (
        f"<p>{section['source_given_names']} kingdom names as the sources gave them, "
        f"{section['resolved_names']} after resolution.</p>{given}{resolved}{mapping}"
    )


def _holes(section: dict) -> str:
    rows = [[rank, n] for rank, n in section["missing_rank"].items()]
    return (
        f"<p>{section['records']:,} images have a lineage with a hole (kept, never dropped).</p>"
        + _table(["missing rank", "images"], rows)
    )


def _compare(section: dict) -> str:
    other = section["other"]
    rows = [
        [rank, r["distinct"], r["other_distinct"], r["gained"], r["lost"], r["kept"]]
        for rank, r in section["ranks"].items()
    ]
    species = section["ranks"]["species"]
    relabelled = section["relabelled"]
    example_rows = [
        [e["species"], e["records"], e["other_records"], e["changed_ranks"], e["lineage"],
         e["other_lineage"]]
        for e in relabelled["examples"]
    ]  # fmt: skip
    return (
        f"<p>Compared with {html.escape(other['path'])} ({html.escape(other['kind'])}, "
        f"{other['records']:,} images; {section['records']:,} here). "
        f"{html.escape(other.get('note') or '')}</p>"
        + _table(["rank", "distinct here", "distinct there", "gained", "lost", "kept"], rows)
        + "<h3>Species gained</h3>"
        + _table(
            ["species", "images"], [[n["name"], n["records"]] for n in species["gained_names"]]
        )
        + "<h3>Species lost</h3>"
        + _table(
            ["species", "images there"], [[n["name"], n["records"]] for n in species["lost_names"]]
        )
        + f"<h3>Relabelled: {relabelled['species']:,} species "
        f"({relabelled['records']:,} images)</h3>"
        + _table(
            ["species", "images", "images there", "changed ranks", "lineage here", "lineage there"],
            example_rows,
        )
    )


def render_audit_html(figures: dict) -> str:
    """The whole page: summary, plots and the tables behind them, plotly.js inlined."""
    plots = audit_figures(figures)
    figure_json = (
        "{"
        + ",".join(
            f"{json.dumps(plot_id)}: {pio.to_json(fig, validate=False)}"
            for plot_id, fig in plots.items()
        )
        + "}"
    ).replace("</", "<\\/")

    def plot(plot_id: str) -> str:
        return f"<div class='plot' id='{plot_id}'></div>"

    sections = [
        ("Summary", _summary(figures)),
        ("Taxonomy", plot("plot-taxonomy")),
        ("Coverage per source",
         plot("plot-rank-source") + _coverage(figures, "by_source", "source")),
        ("Resolution status", plot("plot-status")),
        ("Coverage per kingdom",
         plot("plot-kingdom-share") + _coverage(figures, "by_kingdom", "kingdom")),
        ("Images per species", plot("plot-long-tail")),
        ("Kingdom names", _kingdoms(figures["kingdoms"])),
        ("Unresolved names", _names(figures["unresolved"], "unresolved")),
        ("Ambiguous names", _names(figures["ambiguous"], "ambiguous")),
        ("Methods and flags", _methods_and_flags(figures)),
        ("Conflicts", _conflicts(figures["conflicts"])),
        ("Suspected misspelled duplicates", _misspellings(figures["misspelling_suspects"])),
        ("Lineage holes", _holes(figures["lineage_holes"])),
    ]  # fmt: skip
    if "compare" in figures:
        sections.append(("Comparison", _compare(figures["compare"])))
    body = "".join(f"<h2>{html.escape(title)}</h2>{content}" for title, content in sections)
    title = f"treeoflife audit: {figures.get('workspace', '')}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{CSS}</style>
<script>{ERROR_TRAP_JS}</script>
</head><body>
<pre id="tol-errors" hidden></pre>
<h1>{html.escape(title)}</h1>
<p class="note">generated {html.escape(figures["generated_at"])};
basis: <b>{html.escape(figures["basis"])}</b> — {html.escape(figures["basis_note"])}.
Every figure is also in audit.json.</p>
{body}
<script>{get_plotlyjs()}</script>
<script>var TOL_FIGURES = {figure_json};
{RENDER_JS}</script>
</body></html>
"""
