"""Source trees as records: the SPEC's repo rules, `source:@python`, binaries skipped and counted."""

import os
import sysconfig
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa

from pipeline.errors import UserError
from pipeline.io.licenses import license_type, repo_licenses

SOURCE_SCHEMA = pa.schema([
    ("repo_name", pa.string()),
    ("path", pa.string()),
    ("content", pa.string()),
    ("blob_id", pa.string()),
    ("src_encoding", pa.string()),
    ("language", pa.string()),
    ("extension", pa.string()),
    ("length_bytes", pa.int64()),
    ("detected_licenses", pa.list_(pa.string())),
    ("license_type", pa.string()),
])
SKIPPED_DIRS = {".git", ".hg", ".svn"}


@dataclass(frozen=True)
class SourceFile:
    abspath: str
    repo_name: str
    path: str  # relative to the repo root, '/'-separated
    size: int
    detected_licenses: tuple[str, ...] = ()  # the repository's (pipeline.io.licenses)
    license_type: str | None = None


def python_roots() -> list[tuple[Path, set[str]]]:
    """`source:@python`: the running Python's stdlib and site-packages, each with directories to skip."""
    paths = sysconfig.get_paths()
    stdlib = Path(paths["stdlib"]).resolve()
    sites = []
    for key in ("purelib", "platlib"):
        p = Path(paths[key]).resolve()
        if p not in sites:
            sites.append(p)
    roots = [(stdlib, {"site-packages", "dist-packages", "__pycache__"})]
    roots += [(p, {"__pycache__"}) for p in sites if p != stdlib]
    return roots


def _walk(root: Path, skip: set[str]) -> list[Path]:
    """Regular files under `root`, sorted, never following a symlink that leaves the root."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS and d not in skip)
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.is_symlink():
                target = p.resolve()
                if not target.is_relative_to(root) or not target.is_file():
                    continue
            if p.is_file():
                out.append(p)
    return out


def list_source_files(root: str, owner: str | None = None, skip: set[str] | None = None) -> list[SourceFile]:
    """Files of a source root with their repo: the root itself if it has .git, else one repo per
    top-level directory and `<owner>/_root` for files lying directly in the root."""
    base = Path(root).resolve()
    if not base.is_dir():
        raise UserError(f"{root}: source tree not found")
    skip = skip or set()
    files = []
    if (base / ".git").exists():
        repo_owner = owner or base.parent.name or "local"
        for p in _walk(base, skip):
            files.append(SourceFile(str(p), f"{repo_owner}/{base.name}", p.relative_to(base).as_posix(), _size(p)))
        return with_licenses(files)
    repo_owner = owner or base.name
    for p in _walk(base, skip):
        rel = p.relative_to(base)
        if len(rel.parts) == 1:
            files.append(SourceFile(str(p), f"{repo_owner}/_root", rel.as_posix(), _size(p)))
        else:
            repo = f"{repo_owner}/{rel.parts[0]}"
            files.append(SourceFile(str(p), repo, Path(*rel.parts[1:]).as_posix(), _size(p)))
    return with_licenses(files, inherit_from=f"{repo_owner}/_root")


def with_licenses(files: list[SourceFile], inherit_from: str | None = None) -> list[SourceFile]:
    """Label every file with its repository's license, detected once per repository from the license
    files at its root; repos without any take the source root's (`inherit_from`)."""
    found = repo_licenses(((f.repo_name, f.path, f.abspath) for f in files), inherit_from)
    labels = {repo: (tuple(ids), license_type(ids)) for repo, ids in found.items()}
    return [replace(f, detected_licenses=labels[f.repo_name][0], license_type=labels[f.repo_name][1])
            for f in files]


def _size(p: Path) -> int:
    return p.stat().st_size


def source_roots(spec: str, owner: str | None) -> list[SourceFile]:
    if spec == "@python":
        files = []
        for root, skip in python_roots():
            files += list_source_files(str(root), owner, skip)
        return files
    if spec.startswith("@"):
        raise UserError(f"source:{spec}: unknown source alias (valid: @python)")
    return list_source_files(spec, owner)


def is_binary(head: bytes) -> bool:
    return b"\0" in head[:8192]


def extension_of(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1] if "." in name.lstrip(".") else ""
