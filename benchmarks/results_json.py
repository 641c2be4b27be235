"""Writing a measured table into docs/results/NAME.json from the command that measured it.

Every table records where it came from: the commit (`git rev-parse --short HEAD`, marked when the
work tree had uncommitted changes), the machine (`machine_load.cpu_description`), the date (UTC) and
the command line (the flags given on it). `write` saves the table with `tools.results_tables.write`
and re-renders the pages' regions from it, so a re-run regenerates the docs:

    python -m benchmarks.train_step --results_json=train_step_wrn16

A run that measures some rows of a table (one model and precision of `speed_vs_official`) replaces
those rows and keeps the others; the commit, machine, date and command then name which rows each
belongs to ("abc123 [WRN-16-2 float32] | 1d2fda6 [WRN-28-2 mixed_bfloat16]").
"""

import datetime
import re
import shlex
import subprocess
from pathlib import Path

from benchmarks import machine_load
from tools import results_tables

REPO = Path(__file__).resolve().parents[1]
PROVENANCE = ("commit", "machine", "date", "command")
_SEPARATOR = " | "


def commit(repo=REPO) -> str:
    """The short commit of `repo`'s HEAD, '+uncommitted changes' when tracked files differ from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=60)

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + (" +uncommitted changes" if dirty.stdout.strip() else "")


def machine(cpu: dict | None = None, detail: str | None = None) -> str:
    """'MODEL, N CPUs, KVM guest, AVX-512/AMX flags' of `cpu` (this machine's by default), then `detail`."""
    cpu = cpu or machine_load.cpu_description()
    parts = [cpu.get("model") or "unknown CPU", f"{cpu.get('num_cpus')} CPUs"]
    hypervisor = (cpu.get("lscpu") or {}).get("Hypervisor vendor")
    if hypervisor:
        parts.append(f"{hypervisor} guest")
    wide = [flag for flag in cpu.get("isa_flags", []) if flag.startswith(("avx512", "amx"))]
    parts.append(" ".join(wide) if wide else "no AVX-512/AMX")
    return ", ".join(parts) + (f"; {detail}" if detail else "")


def command_line(module: str, flag_values, leave_out=()) -> str:
    """'python -m MODULE --flag=value ...' with the flags given on the command line (in `flag_values`)."""
    given = []
    for name in flag_values:
        flag = flag_values[name]
        if flag.present and name == flag.name and name not in leave_out:
            given.append(flag.serialize())
    return " ".join(["python", "-m", module, *map(shlex.quote, given)])


def provenance(command: str, machine_text: str | None = None, repo=REPO, today=None) -> dict:
    """{commit, machine, date, command} of a measurement made now, here, by `command`."""
    today = today or datetime.datetime.now(datetime.timezone.utc).date()
    return dict(commit=commit(repo), machine=machine_text or machine(), date=today.isoformat(), command=command)


def row_label(row, key_columns: int) -> str:
    return " ".join(str(cell) for cell in row[:key_columns])


def rows_of_field(value: str, labels: list) -> dict:
    """{value: [row labels]} of a provenance field: 'a [x, y] | b [z]' as written by `merge`, else
    the whole text for every row in `labels`. Labels of rows no longer in `labels` (dropped from the
    table) are left out, and so is a value left with none."""
    known, entries = set(labels), {}
    parts = [re.fullmatch(r"([^\[\]]*) \[([^\[\]]*)\]", part, re.S) for part in value.split(_SEPARATOR)]
    if not all(parts):
        return {value: list(labels)}
    for match in parts:
        names = [name for name in match[2].split(", ") if name in known]
        if names:
            entries.setdefault(match[1], []).extend(names)
    return entries


def keep_rows(table: dict, rows: list, key_columns: int) -> dict:
    """`table` with only `rows` (some of its own), each provenance field naming only those rows."""
    labels = [row_label(row, key_columns) for row in rows]
    kept = dict(table, rows=list(rows))
    for field in PROVENANCE:
        entries = rows_of_field(table[field], labels)  # only the kept rows' labels
        if entries:  # else no rows left to name
            kept[field] = _field_text(entries)
    return kept


def _field_text(entries: dict) -> str:
    """A provenance field from {value: [row labels]}: the value alone when every row has it."""
    return next(iter(entries)) if len(entries) == 1 else _SEPARATOR.join(
        f"{value} [{', '.join(labels)}]" for value, labels in entries.items())


def merge(old: dict | None, new: dict, key_columns: int) -> dict:
    """`new` with the rows of `old` it does not measure again (same first `key_columns` cells) kept
    after its own; each provenance field names the rows of each value when they differ."""
    if not old or old.get("columns") != new["columns"]:
        return new
    new_labels = [row_label(row, key_columns) for row in new["rows"]]
    kept = [row for row in old["rows"] if row_label(row, key_columns) not in new_labels]
    if not kept:
        return new
    kept_labels = [row_label(row, key_columns) for row in kept]
    merged = dict(new, rows=new["rows"] + kept)
    for field in PROVENANCE:
        entries = {new[field]: list(new_labels)}
        for value, labels in rows_of_field(old[field], kept_labels).items():
            entries.setdefault(value, []).extend(labels)
        merged[field] = _field_text(entries)
    if old.get("provenance") and "provenance" not in new:
        merged["provenance"] = f"Rows {', '.join(kept_labels)}: {old['provenance'].rstrip('.')}"
    return merged


def write(name: str, table: dict, key_columns: int | None = None, results=results_tables.RESULTS,
          render: bool = True) -> Path:
    """Saves `table` (columns, rows, ... and the provenance fields) as RESULTS/NAME.json, merged with
    the rows of the file there that it does not measure again when `key_columns` is given; with
    `render`, re-renders the regions of the pages (only when RESULTS is the repository's)."""
    path = Path(results) / f"{name}.json"
    if key_columns is not None and path.is_file():
        table = merge(results_tables.load(name, Path(results)), table, key_columns)
    written = results_tables.write(name, table, Path(results))
    if render and Path(results).resolve() == results_tables.RESULTS.resolve():
        for page, names in results_tables.differences(write=True):
            print(f"{page.relative_to(results_tables.REPO)}: rewritten from docs/results/ ({', '.join(names)})")
    return written
