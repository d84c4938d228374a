"""data_card.md: a Hugging Face style dataset card (YAML header + Markdown) from stats and manifest."""

from pathlib import Path

import yaml


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "n>10M"


def render_card(manifest: dict, stats: dict) -> str:
    t = stats["totals"]
    header = {
        "pretty_name": manifest["name"],
        "language": ["code"],
        "size_categories": [size_category(t["records_out"])],
        "task_categories": ["text-generation"],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}],
    }
    lines = ["---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "",
             f"# {manifest['name']}", "",
             f"Made by codecurate {manifest['packages'].get('codecurate', '')} from "
             f"{len(manifest['inputs'])} input source(s); run started {manifest['started_at']}.", "",
             "## Stages", "", "| stage | records in | records out | removed | MB in | MB out |",
             "|---|---:|---:|---:|---:|---:|"]
    for s in stats["stages"]:
        lines.append(f"| {s['name']} | {s['records_in']:,} | {s['records_out']:,} | {s['records_removed']:,} | "
                     f"{s['bytes_in'] / 1e6:,.1f} | {s['bytes_out'] / 1e6:,.1f} |")
    lines += ["", f"Kept {t['records_out']:,} of {t['records_in']:,} records "
              f"({t['bytes_out'] / 1e6:,.1f} of {t['bytes_in'] / 1e6:,.1f} MB).", "",
              "## Languages", "", "| language | files | MB |", "|---|---:|---:|"]
    for lang, v in stats["languages"].items():
        lines.append(f"| {lang} | {v['records']:,} | {v['bytes'] / 1e6:,.2f} |")
    lines += ["", "## How to load", "", "```python",
              "from datasets import load_dataset",
              'ds = load_dataset("parquet", data_files="data/*.parquet", split="train")',
              "```", ""]
    return "\n".join(lines)


def write_card(out: Path, manifest: dict, stats: dict) -> None:
    (Path(out) / "data_card.md").write_text(render_card(manifest, stats))
