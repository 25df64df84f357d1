"""Check ``coverage.json`` against the gates in ``pyproject.toml`` and print the low-coverage table.

The table (every module under the per-module bar, lowest first) is printed last, whatever the
outcome; the exit status is 1 when any gate fails. Thresholds live only in
``[tool.ml_playground.coverage]`` and only go up.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def percent(covered: int, total: int) -> float:
    return 100.0 if total == 0 else 100.0 * covered / total


def load_gates(pyproject: Path) -> dict[str, Any]:
    gates: dict[str, Any] = tomllib.loads(pyproject.read_text("utf-8"))["tool"]["ml_playground"]["coverage"]
    return gates


def check(report: dict[str, Any], gates: dict[str, Any]) -> tuple[list[str], list[tuple[str, int, int, float]]]:
    failures: list[str] = []
    totals = report["totals"]
    total_statements = percent(totals["covered_lines"], totals["num_statements"])
    total_branches = percent(totals["covered_branches"], totals["num_branches"])
    print(f"total statement coverage {total_statements:.2f}% (gate {gates['total_statements']}%)")
    print(f"total branch coverage    {total_branches:.2f}% (gate {gates['total_branches']}%)")
    if total_statements < gates["total_statements"]:
        failures.append(f"total statement coverage {total_statements:.2f}% < {gates['total_statements']}%")
    if total_branches < gates["total_branches"]:
        failures.append(f"total branch coverage {total_branches:.2f}% < {gates['total_branches']}%")
    low: list[tuple[str, int, int, float]] = []
    for name, data in sorted(report["files"].items()):
        summary = data["summary"]
        statements = percent(summary["covered_lines"], summary["num_statements"])
        if statements < gates["module_statements"]:
            low.append((name, summary["num_statements"], summary["missing_lines"], statements))
            failures.append(f"{name}: statements {statements:.2f}% < {gates['module_statements']}%")
    for name, strict in gates.get("strict_modules", {}).items():
        data = report["files"].get(name)
        if data is None:
            failures.append(f"{name}: strict module not measured")
            continue
        summary = data["summary"]
        statements = percent(summary["covered_lines"], summary["num_statements"])
        branches = percent(summary["covered_branches"], summary["num_branches"])
        print(
            f"{name}: statements {statements:.2f}% (gate {strict['statements']}%), "
            f"branches {branches:.2f}% (gate {strict['branches']}%)"
        )
        if statements < strict["statements"]:
            failures.append(f"{name}: statements {statements:.2f}% < {strict['statements']}%")
        if branches < strict["branches"]:
            failures.append(f"{name}: branches {branches:.2f}% < {strict['branches']}%")
    low.sort(key=lambda row: row[3])
    return failures, low


def render_table(low: list[tuple[str, int, int, float]], bar: float) -> str:
    lines = [f"Modules below {bar:g}% statement coverage (lowest first):", ""]
    if not low:
        return lines[0] + " none"
    lines += ["| Module | Statements | Missing | Coverage |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| `{name}` | {statements} | {missing} | {cov:.2f}% |" for name, statements, missing, cov in low]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--report", type=Path, default=ROOT / ".cache/coverage/coverage.json")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    args = parser.parse_args(argv)
    gates = load_gates(args.pyproject)
    failures, low = check(json.loads(args.report.read_text("utf-8")), gates)
    for failure in failures:
        print(f"coverage gate failed: {failure}")
    print()
    print(render_table(low, gates["module_statements"]))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
