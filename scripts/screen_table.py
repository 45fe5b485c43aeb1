#!/usr/bin/env python3
"""Screened against full scans (issue 16): one markdown row per model and detector, from the
results.jsonl of a screened eval folder and of a full one (`--config eval/screen-off.toml`), with
the screening rank of the true target read from the screened reports. It reads verdicts the
detectors wrote; it computes none.

    python3 scripts/screen_table.py eval/many-classes-screened eval/many-classes-full
"""

import json
import sys
from pathlib import Path


def rows(folder: Path) -> dict:
    out = {}
    path = folder / "results.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                out[(r["model"], r["detector"])] = r
    return out


def rank(folder: Path, model: str, detector: str, target):
    if target is None:
        return "-"
    report = folder / "reports" / detector / f"{model}.json"
    if not report.exists():
        return "?"
    data = json.loads(report.read_text())
    screen = data.get("screen")
    if screen is None:
        return "-"
    c = screen["classes"][target]
    return f"{c['rank']} ({c['role']})"


def verdict(r) -> str:
    if r is None:
        return "not run"
    word = f"flagged, class {r['target']}" if r["flagged"] else f"clean (top {r['most_anomalous']})"
    return f"{word}, {r['score']:.2f}"


def main() -> None:
    screened, full = Path(sys.argv[1]), Path(sys.argv[2])
    s, f = rows(screened), rows(full)
    print("| model | detector | true target | its screening rank | screened | s | full | s | same verdict and target |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in sorted(s):
        model, det = key
        a, b = s[key], f.get(key)
        same = "-" if b is None else ("yes" if (a["flagged"], a["target"]) == (b["flagged"], b["target"]) else "NO")
        truth = a.get("truth_target")
        print(f"| {model} | {det} | {'-' if truth is None else truth} | {rank(screened, model, det, truth)} "
              f"| {verdict(a)} | {a['seconds']:.0f} | {verdict(b)} | {'-' if b is None else format(b['seconds'], '.0f')} | {same} |")


if __name__ == "__main__":
    main()
