"""Readable `report.md` for a scored run: profile, headline numbers (official-compatible and strict), breakdowns,
and the items that could not be scored."""

from __future__ import annotations


def _pct(c: int, n: int) -> str:
    return f"{c}/{n} = {100 * c / n:.2f}%" if n else "0/0"


def render_report(*, benchmark: str, predictions: str, profile: dict, official_correct: int, strict_correct: int,
                  total: int, breakdown: dict[str, dict[str, tuple[int, int]]], errors: list[dict],
                  notes: list[str]) -> str:
    lines = [f"# {benchmark} score report", "", f"Predictions: `{predictions}`", "", "## Profile", ""]
    lines += [f"- **{k}**: {v}" for k, v in profile.items()]
    lines += ["", "## Headline", "", "| mode | correct / total |", "|---|---|",
              f"| official-compatible | {_pct(official_correct, total)} |",
              f"| strict (boxed/answer-tag + math equivalence) | {_pct(strict_correct, total)} |", ""]
    for name, cells in breakdown.items():
        lines += [f"## By {name}", "", f"| {name} | official | strict |", "|---|---|---|"]
        for value, (c_off, c_strict, n) in cells.items():
            lines.append(f"| {value} | {_pct(c_off, n)} | {_pct(c_strict, n)} |")
        lines.append("")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["## Items not scored", ""]
    if errors:
        lines += [f"- `{e['id']}`: {e['error']}" for e in errors[:200]]
        if len(errors) > 200:
            lines.append(f"- ... {len(errors) - 200} more (see items.jsonl)")
    else:
        lines.append("none")
    return "\n".join(lines) + "\n"


def breakdown_counts(rows: list[tuple[str, bool, bool]]) -> dict[str, tuple[int, int, int]]:
    """(group value, official correct, strict correct) rows -> value -> (official c, strict c, n), sorted."""
    acc: dict[str, list[int]] = {}
    for value, off, st in rows:
        c = acc.setdefault(str(value), [0, 0, 0])
        c[0] += int(bool(off))
        c[1] += int(bool(st))
        c[2] += 1
    return {k: tuple(v) for k, v in sorted(acc.items())}
