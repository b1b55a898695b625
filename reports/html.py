"""The report's page: one HTML file with the Vega libraries inlined, so it opens with no network.

`page(...)` lays out the sections top to bottom; each chart is a `<div class="chart">` whose Vega-Lite
spec sits beside it in a `<script type="application/json">`, embedded by vega-embed when the page loads (it
marks each div `data-rendered="true"`, or `"error"` with the message in the div and on the console).
The JavaScript is vl-convert's bundle of vega, vega-lite and vega-embed, pinned to the Vega-Lite version
Altair writes, so the page never loads a script from anywhere.
"""

import functools
import html
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import altair as alt
import vl_convert

_STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 1.7em; margin: 0 0 4px; } h2 { margin-top: 2.2em; border-bottom: 1px solid #ddd; }
.meta { color: #666; margin: 0 0 16px; } nav a { margin-right: 14px; white-space: nowrap; }
.notice { background: #fff8e1; border-left: 4px solid #f0b400; padding: 8px 16px; margin: 16px 0; }
.notice.advice { background: #eef6ff; border-color: #4a90d9; }
.notice ul { margin: 4px 0; padding-left: 20px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: right; white-space: nowrap; }
th { background: #f6f6f6; position: sticky; top: 0; } td.text, th.text { text-align: left; }
td.reason { text-align: left; white-space: normal; min-width: 220px; color: #844; }
.counts span { display: inline-block; margin-right: 18px; } .counts b { font-size: 1.3em; }
.charts { display: flex; flex-wrap: wrap; gap: 8px 24px; } figure { margin: 8px 0 16px; }
.chart { min-height: 60px; } figcaption { color: #555; font-size: 13px; max-width: 380px; }
.scroll { max-height: 560px; overflow: auto; border: 1px solid #eee; }
#cell-filter { width: 320px; padding: 4px 8px; margin-right: 12px; }
tr.failed td, tr.diverged td { background: #fff1f0; } tr.hidden { display: none; }
"""

_EMBED = """
for (const el of document.querySelectorAll("div.chart")) {
  const spec = JSON.parse(document.getElementById(el.dataset.spec).textContent);
  const actions = {export: true, source: false, compiled: false, editor: false};
  vegaEmbed(el, spec, {renderer: "svg", actions: actions})
    .then(() => { el.dataset.rendered = "true"; })
    .catch((err) => {
      el.dataset.rendered = "error";
      el.textContent = "This chart failed to render: " + err;
      console.error("chart " + el.id + ": " + err);
    });
}
const filter = document.getElementById("cell-filter");
const stateFilter = document.getElementById("cell-state");
function filterCells() {
  const terms = filter.value.toLowerCase().split(/\\s+/).filter((t) => t);
  const state = stateFilter.value;
  let shown = 0;
  for (const row of document.querySelectorAll("#cells tbody tr")) {
    const text = row.textContent.toLowerCase();
    const keep = terms.every((t) => text.includes(t)) && (!state || row.dataset.state === state);
    row.classList.toggle("hidden", !keep);
    shown += keep;
  }
  document.getElementById("cell-count").textContent = shown + " shown";
}
if (filter) {
  filter.addEventListener("input", filterCells);
  stateFilter.addEventListener("change", filterCells);
}
"""


def vegalite_version() -> str:
    """The Vega-Lite version Altair writes, as vl-convert names it ("6.4")."""
    major, minor, *_ = alt.SCHEMA_VERSION.lstrip("v").split(".")
    return f"{major}.{minor}"


@functools.cache
def vega_bundle() -> str:
    """vega, vega-lite and vega-embed in one script (about 900 KB), made safe to inline in a <script>."""
    return vl_convert.javascript_bundle(vl_version=vegalite_version()).replace("</script", "<\\/script")


def write_atomically(path: Path, write: Callable[[IO[str]], None]) -> None:
    """`write(file)` into a temporary file beside `path`, renamed over it once whole: a reader (a browser
    reloading the report) never sees half a file, a write that fails leaves the old file as it was and no
    temporary file, and two reports written at once each write their own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as file:
            write(file)
        tmp.replace(path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.strerror:  # named by the file asked for, not the temporary
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def chart_div(index: int, name: str, spec: dict[str, Any], note: str = "") -> str:
    """A chart's placeholder and its spec; `note` (HTML) goes under it."""
    payload = json.dumps(spec, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    caption = f"<figcaption>{note}</figcaption>" if note else ""
    return (
        f'<figure><div class="chart" id="chart-{index}" data-name="{esc(name)}" data-spec="spec-{index}">'
        f'</div>{caption}<script type="application/json" id="spec-{index}">{payload}</script></figure>\n'
    )


def notice(title: str, lines: Sequence[str], *, kind: str = "") -> str:
    if not lines:
        return ""
    items = "".join(f"<li>{esc(line)}</li>" for line in lines)
    return f'<div class="notice {kind}"><b>{esc(title)}</b><ul>{items}</ul></div>\n'


def table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], *, text_columns: Sequence[int] = (0,), **attrs: str
) -> str:
    """A plain table; cells are escaped; columns in `text_columns` are left-aligned."""
    extra = "".join(f' {key}="{esc(value)}"' for key, value in attrs.items())

    def cls(i: int) -> str:
        return ' class="text"' if i in text_columns else ""

    head = "".join(f"<th{cls(i)}>{esc(title)}</th>" for i, title in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{esc(value)}</td>" for i, value in enumerate(row)) + "</tr>\n"
        for row in rows
    )
    return f"<table{extra}><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>\n"


def page(*, title: str, meta: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document: `sections` are (anchor, heading, body HTML), in reading order."""
    nav = " ".join(f'<a href="#{esc(anchor)}">{esc(heading)}</a>' for anchor, heading, _ in sections)
    body = "".join(
        f'<section id="{esc(anchor)}">\n<h2>{esc(heading)}</h2>\n{content}</section>\n'
        for anchor, heading, content in sections
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{_STYLE}</style>\n"
        f"<script>{vega_bundle()}</script>\n"
        f'</head>\n<body>\n<h1>{esc(title)}</h1>\n<p class="meta">{meta}</p>\n<nav>{nav}</nav>\n'
        f"{body}<script>{_EMBED}</script>\n</body>\n</html>\n"
    )
