"""Render the measured tables of README.md and docs/*.md from the JSON files in docs/results/.

A page marks where a table goes:

    <!-- results:NAME -->
    (generated; do not edit)
    <!-- /results:NAME -->

and docs/results/NAME.json holds what was measured (NAME may contain '/', e.g. cifar_cpu/accuracy):

    {"commit": "...", "machine": "...", "date": "...", "command": "...",
     "columns": ["a", "b"], "rows": [[1, 0.5], ...],
     "align": ["l", "r"], "formats": [null, "{:.3f}"], "provenance": "...", "notes": ["..."]}

`commit`, `machine`, `date`, `command`, `columns` and `rows` are required; the rest is optional.
The machine and the date stay in the JSON: the rendered region names only the commit, the command
and the JSON file, so no page carries a date or a machine name in its prose.

    python -m tools.results_tables           # rewrite every region from its JSON
    python -m tools.results_tables --check   # exit 1 naming each region that differs from its JSON
"""

import argparse
import json
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
REQUIRED = ("commit", "machine", "date", "command", "columns", "rows")
REGION = re.compile(r"(<!-- results:(?P<name>[\w./-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)
ALIGN = {"l": "---", "r": "---:", "c": ":---:"}
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)  # markers inside code blocks are examples, not regions


class ResultsError(ValueError):
    pass


def pages(repo=REPO):
    """The pages that may hold regions: README.md and every markdown file under docs/."""
    found = [repo / "README.md"] + sorted((repo / "docs").rglob("*.md"))
    return [p for p in found if p.is_file()]


def load(name, results=RESULTS):
    path = results / f"{name}.json"
    if not path.is_file():
        raise ResultsError(f"{path} does not exist")
    data = json.loads(path.read_text())
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise ResultsError(f"{path}: missing {', '.join(missing)}")
    width = len(data["columns"])
    for key in ("align", "formats"):
        if key in data and len(data[key]) != width:
            raise ResultsError(f"{path}: {key} has {len(data[key])} entries for {width} columns")
    for i, row in enumerate(data["rows"]):
        if len(row) != width:
            raise ResultsError(f"{path}: row {i} has {len(row)} cells for {width} columns")
    return data


def dumps(data):
    """JSON with one key per line and one table row per line, so a re-measurement diffs row by row."""
    lines = []
    for key, value in data.items():
        if key == "rows":
            rows = ",\n".join("  " + json.dumps(row, ensure_ascii=False) for row in value)
            text = "[\n" + rows + "\n ]" if value else "[]"
        else:
            text = json.dumps(value, ensure_ascii=False)
        lines.append(f" {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def write(name, data, results=RESULTS):
    """Save a measured table as docs/results/NAME.json (for the command that measured it)."""
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise ResultsError(f"{name}: missing {', '.join(missing)}")
    path = results / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(data))
    return path


def cell(value, fmt):
    if value is None:
        return "–"
    if fmt and isinstance(value, (int, float)) and not isinstance(value, bool):
        text = fmt.format(value)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def render(name, data, page):
    """The region's body: the table, its notes, and a line naming its source."""
    formats = data.get("formats") or [None] * len(data["columns"])
    align = data.get("align") or ["l"] * len(data["columns"])
    lines = ["| " + " | ".join(cell(c, None) for c in data["columns"]) + " |",
             "|" + "|".join(ALIGN[a] for a in align) + "|"]
    for row in data["rows"]:
        lines.append("| " + " | ".join(cell(v, f) for v, f in zip(row, formats)) + " |")
    lines.append("")
    for note in data.get("notes", []):
        lines += [note, ""]
    link = os.path.relpath(RESULTS / f"{name}.json", page.parent).replace(os.sep, "/")
    source = f"Source: [`docs/results/{name}.json`]({link}), commit `{data['commit']}`; command: `{data['command']}`."
    if data.get("provenance"):
        source += f" {data['provenance'].rstrip('.')}."
    lines.append(source)
    return "\n".join(lines) + "\n"


def _in_code(text):
    spans = [m.span() for m in FENCE.finditer(text)]
    return lambda pos: any(start <= pos < end for start, end in spans)


def regenerate(text, page, results=RESULTS):
    """The page's text with every region rendered from its JSON, and the names of the regions that changed."""
    names = []
    in_code = _in_code(text)

    def replace(match):
        if in_code(match.start()):
            return match.group(0)
        name = match["name"]
        body = render(name, load(name, results), page)
        if body != match["body"]:
            names.append(name)
        return match.group(1) + body + match.group(4)

    return REGION.sub(replace, text), names


def differences(repo=REPO, write=False):
    """[(page, names)] of the pages whose regions differ from their JSON; with write, rewrite them."""
    stale = []
    for page in pages(repo):
        text = page.read_text()
        new, names = regenerate(text, page, repo / "docs" / "results")
        if new != text:
            stale.append((page, names))
            if write:
                page.write_text(new)
    return stale


def regions(repo=REPO):
    """{name: [pages]} of every region in the pages."""
    found = {}
    for page in pages(repo):
        text = page.read_text()
        in_code = _in_code(text)
        for match in REGION.finditer(text):
            if not in_code(match.start()):
                found.setdefault(match["name"], []).append(page)
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a region differs from its JSON")
    args = parser.parse_args(argv)
    try:
        stale = differences(write=not args.check)
    except (ResultsError, json.JSONDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for page, names in stale:
        verb = "differs from" if args.check else "rewritten from"
        print(f"{page.relative_to(REPO)}: {verb} docs/results/ ({', '.join(names)})")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
