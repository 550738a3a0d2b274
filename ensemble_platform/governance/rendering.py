"""Reports as documents a reviewer opens without running code.

A `ReportDocument` is titled sections of Markdown and figures. It renders to Markdown (figures
as files beside it, or left out for the Dagster UI) and to one self-contained HTML file: inline
CSS, figures embedded as base64 PNG, no network URL, so it opens offline and can be archived or
mailed as is. Markdown is rendered with markdown-it (raw HTML disabled, so values taken from
the data cannot inject markup).

The Markdown files are read elsewhere too (MLflow, a repository viewer, another renderer that
passes raw HTML through), so every value taken from the data (category and group values, column
and member names: table cells via `fmt`, headings, captions, `md_text` in running text) is made
inert in the Markdown itself: nothing in it can open an HTML tag, comment or autolink, spell a
character reference or start an inline link. Text without `<` + letter, `&name;` or `](` is left
byte for byte as it was, and the HTML rendered from it is the same either way.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from markdown_it import MarkdownIt

from ensemble_platform.evaluation.metrics import METRIC_NAMES
from ensemble_platform.files import write_atomic, write_json

_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1.5rem; color: #1f2328; line-height: 1.45; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .9rem; display: block; max-width: 100%;
        overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: .25rem .6rem; text-align: left; }
th { background: #f6f8fa; overflow-wrap: anywhere; }
code { background: #f6f8fa; padding: 0 .2rem; font-size: .85rem; word-break: break-all; }
figure { margin: 1rem 0; } figcaption { color: #57606a; font-size: .85rem; }
img { max-width: 100%; }
.subtitle { color: #57606a; }
"""


@dataclass(frozen=True)
class Figure:
    name: str  # file stem, unique within a document
    caption: str
    png: bytes


@dataclass
class Section:
    heading: str
    body: str = ""  # Markdown
    figures: list[Figure] = field(default_factory=list)


@dataclass
class ReportDocument:
    title: str
    subtitle: str
    sections: list[Section]

    def __post_init__(self) -> None:
        """Figure names made unique in document order (`_2`, `_3`, ...): names derived from data can meet
        ("Marital status" and "Marital_status" slug alike) and one PNG would overwrite the other."""
        taken: set[str] = set()
        for section in self.sections:
            renamed = []
            for figure in section.figures:
                name, n = figure.name, 1
                while name in taken:
                    n += 1
                    name = f"{figure.name}_{n}"
                taken.add(name)
                renamed.append(figure if name == figure.name else replace(figure, name=name))
            section.figures = renamed

    def figures(self) -> list[Figure]:
        return [f for s in self.sections for f in s.figures]

    def markdown(self, figure_dir: str | None = "figures", *, embed_figures: bool = False) -> str:
        """Markdown; figures link to `figure_dir/<name>.png`, or are left out when None, or are
        embedded as base64 PNG data URIs (`embed_figures`: Dagster's UI renders those)."""
        parts = [f"# {_heading(self.title)}", f"_{_heading(self.subtitle)}_"]
        for section in self.sections:
            parts.append(f"## {_heading(section.heading)}")
            if section.body:
                parts.append(tables_apart(section.body.strip()))
            if embed_figures:
                parts += [f"![{_caption(f.caption)}]({_data_uri(f.png)})" for f in section.figures]
            elif figure_dir is not None:
                parts += [f"![{_caption(f.caption)}]({figure_dir}/{f.name}.png)" for f in section.figures]
        return "\n\n".join(parts) + "\n"

    def html(self) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>", f'<p class="subtitle">{html.escape(self.subtitle)}</p>']
        for section in self.sections:
            anchor = section.heading.lower().replace(" ", "-")
            body.append(f'<section id="{html.escape(anchor)}"><h2>{html.escape(section.heading)}</h2>')
            body.append(_MARKDOWN.render(tables_apart(section.body)))
            for figure in section.figures:
                body.append(
                    f'<figure><img alt="{html.escape(figure.caption)}" src="{_data_uri(figure.png)}">'
                    f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>"
                )
            body.append("</section>")
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body)
            + "\n</body></html>\n"
        )


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# A Markdown table's delimiter row: | --- | :---: | ...
_DELIMITER_ROW = re.compile(r"^\s*\|(\s*:?-+:?\s*\|)+\s*$")


def tables_apart(markdown: str) -> str:
    """A blank line before every table that follows a line of text: without it the table is read as
    the sentence's continuation and shown as raw pipes."""
    lines = markdown.split("\n")
    out: list[str] = []
    for i, line in enumerate(lines):
        starts_table = (line.lstrip().startswith("|") and i + 1 < len(lines)
                        and _DELIMITER_ROW.match(lines[i + 1]) is not None)
        if starts_table and out and out[-1].strip() and not out[-1].lstrip().startswith("|"):
            out.append("")
        out.append(line)
    return "\n".join(out)


def _heading(text: str) -> str:
    """Titles and headings name data (a column, a dataset): one line, inert."""
    return md_text(_one_line(text))


def _caption(text: str) -> str:
    """A figure caption is an image's alt text: brackets would end it early."""
    return _heading(text).replace("[", "\\[").replace("]", "\\]")


def write_report(
    document: ReportDocument, directory: Path, stem: str, data: Mapping[str, object] | None = None
) -> dict[str, Path]:
    """Write `<stem>.md`, `<stem>.html`, its figures and (when given) `<stem>.json`.

    Every file is written to a temporary name and renamed, figures first, so a reader never
    finds a document pointing at a figure that is not there yet.
    """
    paths: dict[str, Path] = {}
    for figure in document.figures():
        paths[f"figure:{figure.name}"] = write_atomic(directory / "figures" / f"{figure.name}.png", figure.png)
    if data is not None:
        paths["json"] = write_json(data, directory / f"{stem}.json")
    paths["markdown"] = write_atomic(directory / f"{stem}.md", document.markdown().encode())
    paths["html"] = write_atomic(directory / f"{stem}.html", document.html().encode())
    return paths


# What could turn text into markup in some Markdown renderer: `<` opening a tag, closing tag,
# comment, declaration or autolink; `&` starting a character reference; `](` starting a link.
_TAG_OPEN = re.compile(r"<(?=[A-Za-z/!?])")
_CHAR_REF = re.compile(r"&(?=#[0-9]+;|#[xX][0-9A-Fa-f]+;|[A-Za-z][A-Za-z0-9]*;)")
_TRAILING_BACKSLASHES = re.compile(r"\\+(?=\||$)")


def md_inert(text: str) -> str:
    """Markdown written by a person (spec text) with raw HTML made inert (shown as text, as the
    HTML report shows it); the rest of its Markdown is kept."""
    return _TAG_OPEN.sub("&lt;", text)


def md_text(value: object) -> str:
    """A value from the data as literal Markdown text that no renderer turns into markup."""
    text = _CHAR_REF.sub("&amp;", str(value))  # first: the references written below stay intact
    return _TAG_OPEN.sub("&lt;", text).replace("](", "]\\(")


def _one_line(text: str) -> str:
    return text.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


def fmt(value: object, digits: int = 4) -> str:
    """A table cell: floats rounded, missing values as an en dash, pipes escaped, text made
    inert (`md_text`)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    # A backslash just before a pipe or the cell's end would escape the delimiter: keep it literal.
    text = _TRAILING_BACKSLASHES.sub(lambda m: m.group(0) * 2, _one_line(str(value)))
    return md_text(text.replace("|", "\\|"))


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]], digits: int = 4) -> str:
    lines = ["| " + " | ".join(fmt(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(cell, digits) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def metrics_table(rows: dict[str, dict[str, float]], highlight: str | None = None) -> str:
    """Rows of the platform's standard metrics (METRIC_NAMES), one model or strategy per row."""
    return md_table(
        ["name", *METRIC_NAMES],
        [[f"**{name}**" if name == highlight else name, *(m[k] for k in METRIC_NAMES)] for name, m in rows.items()],
    )
