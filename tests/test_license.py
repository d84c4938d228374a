"""Repository license detection at ingest (real license texts of this machine) and license_filter."""

import json
import shutil
import sysconfig
from pathlib import Path

import pytest
from conftest import read_dir, run_cli, write_config, write_parquet
from datatrove.data import Document

from pipeline.io.licenses import license_of_file, license_of_readme, license_type, repo_licenses
from stages.license import LicenseFilter, LicenseOptions

COMMON = Path("/usr/share/common-licenses")  # Debian base-files: the licenses' real texts
PYTHON_LICENSE = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
MIT_TEXT = """MIT License

Copyright (c) 2024 Example Maintainers

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY.
"""


@pytest.mark.parametrize(("name", "spdx"), [
    ("Apache-2.0", "Apache-2.0"), ("GPL-2", "GPL-2.0"), ("GPL-3", "GPL-3.0"), ("LGPL-2.1", "LGPL-2.1"),
    ("LGPL-3", "LGPL-3.0"), ("BSD", "BSD-3-Clause"), ("MPL-2.0", "MPL-2.0"), ("CC0-1.0", "CC0-1.0"),
    ("Artistic", "Artistic-1.0"), ("GFDL-1.3", "GFDL-1.3"),
])
def test_real_license_texts(name, spdx):
    assert license_of_file((COMMON / name).read_text(errors="replace")) == [spdx]


def test_first_license_of_a_text_wins_and_notices_count():
    # Python's LICENSE names the GPL in its history before the PSF terms: only the PSF text counts
    python = PYTHON_LICENSE.read_text()
    assert "GPL" in python[: python.index("PYTHON SOFTWARE FOUNDATION LICENSE")]
    assert license_of_file(python) == ["Python-2.0"]
    assert license_of_file(MIT_TEXT) == ["MIT"]
    assert license_of_file(MIT_TEXT.replace("\n", " ").upper()) == ["MIT"]  # reflowed, re-cased
    bsd2 = ("Redistribution and use in source and binary forms, with or without modification, are permitted "
            "provided that the following conditions are met: 1. Redistributions of source code must retain ...")
    assert license_of_file(bsd2) == ["BSD-2-Clause"]
    gpl_notice = ("This program is free software: you can redistribute it and/or modify it under the terms of the "
                  "GNU General Public License as published by the Free Software Foundation, either version 3 of "
                  "the License, or (at your option) any later version.")
    assert license_of_file(gpl_notice) == ["GPL-3.0"]
    assert license_of_file("Licensed under the Apache License, Version 2.0 (the \"License\");") == ["Apache-2.0"]
    assert license_of_file("ISC License\n\nPermission to use, copy, modify, and/or distribute this software for "
                           "any purpose with or without fee is hereby granted") == ["ISC"]
    assert license_of_file("This is free and unencumbered software released into the public domain.") == [
        "Unlicense"]
    assert license_of_file("This library is free software; you can redistribute it and/or modify it under the "
                           "same terms as Perl itself.") == ["Artistic-1.0-Perl"]
    assert license_of_file("This program is under the GNU Affero General Public License v3.") == ["AGPL-3.0"]
    # short files name their license; SPDX identifiers are taken as written
    assert license_of_file("MIT\n") == ["MIT"]
    assert license_of_file("// SPDX-License-Identifier: Apache-2.0 WITH LLVM-exception\n") == ["Apache-2.0"]
    assert license_of_file("# SPDX-License-Identifier: GPL-2.0-or-later OR MIT\n") == ["GPL-2.0", "MIT"]
    # a long text that merely mentions a name is not that license
    assert license_of_file("Contributors: see the list below. " * 20 + "Ported from an MIT project.") == []


def test_readme_license_sections():
    md = "# tool\n\nBuilt on GPL tools, BSD sockets.\n\n## License\n\nThis project is licensed under the MIT License.\n"
    assert license_of_readme(md) == ["MIT"]
    rst = "tool\n====\n\nLicense\n-------\n\nBSD 3-Clause, see LICENSE.\n"
    assert license_of_readme(rst) == ["BSD-3-Clause"]
    assert license_of_readme("tool\n\nLicense: Apache 2.0\n") == ["Apache-2.0"]
    assert license_of_readme("# tool\n\nA wrapper around a GPL program.\n") == []


def test_license_type_like_the_stack_v2():
    assert license_type([]) == "no_license"
    assert license_type(["MIT", "Apache-2.0"]) == "permissive"
    assert license_type(["Python-2.0"]) == "permissive"
    assert license_type(["MIT", "GPL-3.0"]) == "non_permissive"
    assert license_type(["MPL-2.0"]) == "non_permissive"


def _make_repos(root: Path) -> None:
    """mit/ (LICENSE), gpl/ (COPYING = the real GPL-3 text), dual/ (LICENSE-MIT + LICENSE-APACHE),
    readme/ (README license section), plain/ (nothing)."""
    files = {
        "mit/LICENSE": MIT_TEXT, "mit/src/app.py": "def app():\n    return 1\n",
        "gpl/COPYING": (COMMON / "GPL-3").read_text(), "gpl/main.c": "int main(void) { return 0; }\n",
        "dual/LICENSE-MIT": MIT_TEXT, "dual/LICENSE-APACHE": (COMMON / "Apache-2.0").read_text(),
        "dual/lib.rs": "pub fn f() {}\n",
        "readme/README.md": "# readme\n\n## License\n\nApache License 2.0\n", "readme/a.py": "A = 1\n",
        "plain/a.py": "B = 2\n", "plain/docs/LICENSE": MIT_TEXT,  # not at the repo root: does not count
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


EXPECTED = {"acme/mit": (["MIT"], "permissive"), "acme/gpl": (["GPL-3.0"], "non_permissive"),
            "acme/dual": (["Apache-2.0", "MIT"], "permissive"), "acme/readme": (["Apache-2.0"], "permissive"),
            "acme/plain": ([], "no_license")}


def test_repo_licenses_and_source_root_inheritance(tmp_path):
    _make_repos(tmp_path)
    files = [(f"acme/{p.relative_to(tmp_path).parts[0]}", Path(*p.relative_to(tmp_path).parts[1:]).as_posix(),
              str(p)) for p in tmp_path.rglob("*") if p.is_file()]
    found = repo_licenses(files)
    assert {repo: (ids, license_type(ids)) for repo, ids in found.items()} == EXPECTED
    (tmp_path / "LICENSE").write_text(MIT_TEXT)
    files.append(("acme/_root", "LICENSE", str(tmp_path / "LICENSE")))
    inherited = repo_licenses(files, inherit_from="acme/_root")
    assert inherited["acme/plain"] == ["MIT"] and inherited["acme/gpl"] == ["GPL-3.0"]


def test_ingest_labels_and_filter_removes_non_permissive(tmp_path):
    _make_repos(tmp_path / "acme")
    cfg = write_config(tmp_path / "c.yaml", [{"license_filter": {}}], [f"source:{tmp_path / 'acme'}"])
    result = run_cli("run", str(cfg), "--quiet")
    assert result.returncode == 0, result.stderr
    assert run_cli("verify", str(tmp_path / "out")).returncode == 0
    data = read_dir(tmp_path / "out" / "data").to_pylist()
    removed = read_dir(tmp_path / "out" / "removed" / "license_filter").to_pylist()
    labels = {r["repo_name"]: (r["detected_licenses"], r["license_type"]) for r in data + removed}
    assert labels == EXPECTED
    assert {r["repo_name"] for r in removed} == {"acme/gpl"}
    assert {r["removal_reason"] for r in removed} == {"license:non_permissive"}
    assert {r["repo_name"] for r in data} == set(EXPECTED) - {"acme/gpl"}


def test_filter_allow_list_and_missing(tmp_path):
    def doc(kind):
        return Document(text="x", id=str(kind), metadata={"license_type": kind})

    default = LicenseFilter("license_filter")
    assert [default.filter(doc(k)) for k in ("permissive", "no_license", "non_permissive", None)] == [
        True, True, (False, "license:non_permissive"), True]
    strict = LicenseFilter("license_filter", LicenseOptions(allow=["permissive"], missing="drop"))
    assert [strict.filter(doc(k)) for k in ("permissive", "no_license", None)] == [
        True, (False, "license:no_license"), (False, "license:missing")]

    rows = [{"repo_name": "o/a", "path": "a.py", "content": "A = 1\n", "license_type": "permissive"},
            {"repo_name": "o/b", "path": "b.py", "content": "B = 2\n", "license_type": None}]
    write_parquet(tmp_path / "in" / "x.parquet", rows)
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    cfg = write_config(tmp_path / "c.yaml", [{"license_filter": {"missing": "drop"}}], [str(tmp_path / "in")])
    assert run_cli("run", str(cfg), "--quiet").returncode == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert next(s for s in stats["stages"] if s["name"] == "license_filter")["details"] == {"license:missing": 1}
    bad = write_config(tmp_path / "bad.yaml", [{"license_filter": {"allow": ["permisive"]}}], [str(tmp_path / "in")])
    result = run_cli("run", str(bad))
    assert result.returncode == 2 and "allow" in result.stderr and "Traceback" not in result.stderr
