"""Config validation: every fault is one line naming the file and key, exit 2, no traceback."""

from conftest import run_cli, write_config


def _err(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_unknown_stage_names_valid_choices(tmp_path, corpus):
    cfg = write_config(tmp_path / "c.yaml", [{"exact_dedupe": {}}], [str(corpus)])
    line = _err(run_cli("run", str(cfg)))
    assert "c.yaml" in line and "stages[0]" in line and "exact_dedupe" in line and "exact_dedup" in line


def test_unknown_option_and_wrong_type(tmp_path, corpus):
    cfg = write_config(tmp_path / "c.yaml", [{"exact_dedup": {"normalise": True}}], [str(corpus)])
    line = _err(run_cli("run", str(cfg)))
    assert "stages[0].exact_dedup.normalise" in line and "normalize_whitespace" in line
    cfg = write_config(tmp_path / "c.yaml", [], [str(corpus)], executor={"workers": "many"})
    line = _err(run_cli("run", str(cfg)))
    assert "executor.workers" in line


def test_unknown_top_level_key(tmp_path, corpus):
    cfg = write_config(tmp_path / "c.yaml", [], [str(corpus)], outptu="x")
    assert "outptu: unknown key" in _err(run_cli("run", str(cfg)))


def test_malformed_yaml(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("name: x\nstages: [\n  - exact_dedup: {\n")
    line = _err(run_cli("run", str(cfg)))
    assert "bad.yaml" in line and "malformed YAML" in line


def test_missing_config_and_bad_arguments(tmp_path):
    assert "nope.yaml" in _err(run_cli("run", str(tmp_path / "nope.yaml")))
    assert "--workers" in _err(run_cli("run", "x.yaml", "--workers", "two"))


def test_stage_used_twice_gets_suffix(tmp_path, corpus):
    from pipeline.config import load_config

    cfg = write_config(tmp_path / "c.yaml", [{"exact_dedup": {}}, {"exact_dedup": {"normalize_whitespace": True}}],
                       ["data/in.parquet"])
    config, specs = load_config(cfg)
    assert [s.name for s in specs] == ["exact_dedup", "exact_dedup_2"]
    # relative paths resolve against the config's directory
    assert config.input.paths == [str(tmp_path / "data" / "in.parquet")]
    assert config.output.path == str(tmp_path / "out")
