"""stats.json: datatrove's per-task stats files merged into the SPEC's per-stage shape."""

import json
from collections import Counter
from pathlib import Path

from rich.table import Table

COUNTS = ("records_in", "records_out", "records_removed", "bytes_in", "bytes_out")


def _value(v) -> float:
    return v if isinstance(v, int | float) else v.get("total", 0)


def stage_parts(logging_dirs: list[Path]) -> dict[str, dict]:
    """Sum every step's counters over all tasks of the given jobs, keyed by datatrove step name."""
    parts: dict[str, dict] = {}
    for folder in logging_dirs:
        for f in sorted((Path(folder) / "stats").glob("*.json")):
            for step in json.loads(f.read_text()):
                name = step["name"].split(": ", 1)[-1]
                part = parts.setdefault(name, {"counts": Counter(), "details": Counter(), "seconds": 0.0,
                                               "languages": {}})
                time_stats = step.get("time_stats") or {}
                part["seconds"] += _value(time_stats) if time_stats else 0.0
                for key, v in (step.get("stats") or {}).items():
                    if key.startswith("detail:"):
                        part["details"][key[len("detail:"):]] += int(_value(v))
                    elif key in COUNTS:
                        part["counts"][key] += int(_value(v))
                    elif key.startswith("language/"):
                        _, language, what = key.split("/")
                        counts = part["languages"].setdefault(language, {"records": 0, "bytes": 0})
                        counts[what] += int(_value(v))
    return parts


def merge_stages(parts: dict[str, dict], stage_names: list[str]) -> list[dict]:
    """One entry per SPEC stage ('read' first). A global stage's signature part counts what came
    in, its '#filter' part what went out and was removed, and all parts add time and details."""
    out = []
    for name in ["read", *stage_names]:
        counts, details, seconds = Counter(), Counter(), 0.0
        for part_name, part in parts.items():
            base, _, role = part_name.partition("#")
            if base != name:
                continue
            seconds += part["seconds"]
            details.update(part["details"])
            for key, v in part["counts"].items():
                if role == "filter" and key in ("records_in", "bytes_in"):
                    continue
                counts[key] += v
        out.append({"name": name, **{k: counts.get(k, 0) for k in COUNTS},
                    "seconds": round(seconds, 3), "details": dict(sorted(details.items()))})
    return out


def languages(parts: dict[str, dict]) -> dict[str, dict]:
    """`languages` of stats.json: what the data writer counted, largest first."""
    counted = parts.get("data", {}).get("languages", {})
    return dict(sorted(counted.items(), key=lambda kv: (-kv[1]["records"], kv[0])))


def totals(stages: list[dict], languages: dict) -> dict:
    read = stages[0]
    return {
        "records_in": read["records_in"],
        "records_out": sum(v["records"] for v in languages.values()),
        "records_removed": sum(s["records_removed"] for s in stages),
        "bytes_in": read["bytes_in"],
        "bytes_out": sum(v["bytes"] for v in languages.values()),
        "seconds": round(sum(s["seconds"] for s in stages), 3),
    }


def summary_table(stats: dict, title: str = "codecurate run") -> Table:
    table = Table(title=title)
    for col in ("stage", "in", "out", "removed", "MB in", "MB out", "seconds"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for s in stats["stages"]:
        table.add_row(s["name"], f"{s['records_in']:,}", f"{s['records_out']:,}", f"{s['records_removed']:,}",
                      f"{s['bytes_in'] / 1e6:,.1f}", f"{s['bytes_out'] / 1e6:,.1f}", f"{s['seconds']:.1f}")
    t = stats["totals"]
    table.add_row("[bold]total", f"{t['records_in']:,}", f"{t['records_out']:,}", f"{t['records_removed']:,}",
                  f"{t['bytes_in'] / 1e6:,.1f}", f"{t['bytes_out'] / 1e6:,.1f}", f"{t['seconds']:.1f}")
    return table
