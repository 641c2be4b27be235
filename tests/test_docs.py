"""The documentation stays true: every measured table matches the JSON it is generated from, every
relative link and anchor in README.md and docs/ resolves, and no page carries a date in its prose."""

import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from tools import results_tables

REPO = Path(__file__).resolve().parents[1]
PAGES = results_tables.pages(REPO)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def page_id(page):
    return str(page.relative_to(REPO))


def prose(text):
    """The text without fenced code blocks and inline code, where links are not links."""
    text = results_tables.FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.replace("`", "")).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page):
    seen, found = {}, set()
    for match in HEADING.finditer(results_tables.FENCE.sub("", page.read_text())):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def test_slug_matches_github():
    assert slug("Datasets and `--data_dir`") == "datasets-and---data_dir"
    assert slug("JEM++: proximal sampler and informative initialisation") == \
        "jem-proximal-sampler-and-informative-initialisation"
    assert slug("Semi-supervised JEM (`--labels_per_class=N`)") == "semi-supervised-jem---labels_per_classn"
    assert slug("Export to the official code's format") == "export-to-the-official-codes-format"


def test_every_results_region_matches_its_json():
    stale = results_tables.differences(REPO)
    assert not stale, ("regions differ from docs/results/ (run `python -m tools.results_tables`): "
                       + "; ".join(f"{page_id(p)}: {', '.join(n)}" for p, n in stale))


def test_every_region_has_a_valid_json_and_every_table_json_is_shown():
    shown = results_tables.regions(REPO)
    assert shown, "no results regions found in the docs"
    for name in shown:
        results_tables.load(name, REPO / "docs" / "results")  # raises on a missing file or field
    tables = set()
    for path in (REPO / "docs" / "results").rglob("*.json"):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "columns" in data and "rows" in data:
            tables.add(str(path.relative_to(REPO / "docs" / "results").with_suffix("")))
    assert tables <= set(shown), f"results tables shown on no page: {sorted(tables - set(shown))}"


def test_render_rejects_a_row_of_the_wrong_width(tmp_path):
    data = dict(commit="c", machine="m", date="d", command="x", columns=["a", "b"], rows=[[1]])
    results_tables.write("bad", data, tmp_path)
    with pytest.raises(results_tables.ResultsError, match="row 0"):
        results_tables.load("bad", tmp_path)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_resolve(page):
    broken = []
    for match in LINK.finditer(prose(page.read_text())):
        target = match.group(1) or match.group(2)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = unquote(target).partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with anchor #{anchor} in {file.relative_to(REPO)}")
    assert not broken, f"{page_id(page)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_no_date_or_machine_in_the_pages(page):
    text = page.read_text()
    dates = re.findall(r"\b20\d\d-[01]\d-[0-3]\d\b", text)
    machines = re.findall(r"\b(?:EPYC|Xeon|Ryzen|Threadripper|Core i[3579])\b", text)
    assert not dates and not machines, (f"{page_id(page)}: dates {dates} and machine names {machines} belong "
                                        "in docs/results/*.json, not in the pages")


def test_readme_is_short_and_starts_with_the_two_commands():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    head = "\n".join(text.splitlines()[:20])
    assert "pip install -r requirements.txt && python -m jem_tf.train --preset=quick" in head
    assert "pip install -r requirements.txt && python -m pytest" in head
    assert "pip install -r requirements.txt && python -m pytest" in (REPO / ".ci" / "run").read_text()
