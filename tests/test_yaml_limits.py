"""Hostile YAML in rules and config: alias bombs, deep nesting, huge files and too many
aliases are refused with a located error, quickly and without growing the process."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from monitor.config import load_config
from monitor.core import yamlpos
from monitor.core.yamlpos import load_yaml
from monitor.errors import ConfigError, RulesError, YamlError
from monitor.shell.rulefiles import load_rules

ROOT = Path(__file__).resolve().parent.parent


def bomb(levels: int = 9, width: int = 9) -> str:
    """The issue's alias bomb: each level a list of ``width`` references to the one
    before: ``width ** levels`` values from about 600 bytes."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_where_it_starts_expanding() -> None:
    text = bomb()
    assert len(text) < 700
    with pytest.raises(YamlError) as e:
        load_yaml(text, "rules/bomb.yaml")
    (p,) = e.value.problems
    assert p.path == "rules/bomb.yaml" and p.line is not None and p.column is not None
    assert "expands to more than" in p.message and "aliases" in p.message


def test_deep_nesting_is_refused_in_flow_and_block_style() -> None:
    flow = "a: " + "[" * 5_000 + "]" * 5_000 + "\n"
    block = "a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 100)) + "  " * 100 + "x: 1\n"
    for text in (flow, block):
        with pytest.raises(YamlError) as e:
            load_yaml(text, "config.yaml")
        (p,) = e.value.problems
        assert f"nested more than {yamlpos.MAX_DEPTH} levels" in p.message
        assert p.line is not None


def test_too_many_aliases_and_too_many_bytes() -> None:
    many = "a: &a 1\nb: [" + ", ".join(["*a"] * (yamlpos.MAX_ALIASES + 1)) + "]\n"
    with pytest.raises(YamlError, match="more than 1,000 YAML aliases"):
        load_yaml(many, "r.yaml")
    huge = "a: '" + "x" * (yamlpos.MAX_BYTES + 1) + "'\n"
    with pytest.raises(YamlError, match=r"more than the 4,194,304 a monitor YAML file"):
        load_yaml(huge, "r.yaml")


def test_ordinary_anchors_still_work() -> None:
    data, positions = load_yaml("base: &b {channels: [slack]}\nrule: *b\nlist: [*b, *b]\n", "x")
    assert data == {"base": {"channels": ["slack"]}, "rule": {"channels": ["slack"]},
                    "list": [{"channels": ["slack"]}, {"channels": ["slack"]}]}
    assert positions[("rule",)] == (1, 7)  # an alias is located at its anchor


def test_a_bomb_in_the_rules_or_the_config_is_a_located_error(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    (tmp_path / "rules" / "bomb.yaml").write_text(bomb(), encoding="utf-8")
    with pytest.raises(RulesError) as e:
        load_rules(tmp_path / "rules", channels=None)
    assert "bomb.yaml:" in str(e.value) and "expands to more than" in str(e.value)
    cfg = tmp_path / "config.yaml"
    cfg.write_text("feeds: []\n" + bomb(), encoding="utf-8")
    with pytest.raises(ConfigError) as e2:
        load_config(cfg)
    assert "config.yaml:" in str(e2.value) and "expands to more than" in str(e2.value)


async def test_monitor_check_refuses_a_bomb_without_stalling(tmp_path: Path) -> None:
    """The real command, as a user runs it after editing rules: a clear error and exit 1
    (before the limit, the same 600 bytes grew the process by about 100 MB/s)."""
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    (tmp_path / "rules" / "bomb.yaml").write_text(bomb(), encoding="utf-8")
    (tmp_path / "config.yaml").write_text(
        "feeds: [{name: a, url: 'http://127.0.0.1:9/a.rss'}]\nrules: rules\nchannels:\n"
        "  slack-news: {type: file, path: s.jsonl}\n  email-oncall: {type: file, path: e.jsonl}\n"
        "  audit-file: {type: file, path: a.jsonl}\n", encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitor", "check", cwd=str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = (out + err).decode()
    assert proc.returncode == 1, text
    assert "bomb.yaml:" in text and "expands to more than" in text


# -- the LibYAML fast path -----------------------------------------------------------------
SAMPLES = [
    "a: é€ 😀 x\nb: [1, 2, {c: 'dé'}]\n",
    "k: |\n  multi\n  line\nm: >\n  folded\n  text\n",
    "x: &a [1, 2]\ny: *a\nz: {<<: {p: 1}, q: 2}\n",
    "\ufeffa: 1\n",
    "a:\r\n  - 1\r\n  - 2\r\n",
    "a: 'x\u2028y'\nb: 2\n",
    "when: 2026-01-02T03:04:05Z\nn: ~\nt: yes\nf: 1.5e3\n",
]
BROKEN = [
    "feeds: [a, b\nrules: x\n",  # an unclosed flow sequence
    "a: 'unclosed\nb: 2\n",
    "a: 1\na: 2\n",  # a duplicate key
    "a: 2024-02-30\n",  # a date PyYAML cannot build
    "a:\n\t- 1\n",  # a tab
    "- " * 70 + "x\n",  # too deep
]


@pytest.mark.skipif(yamlpos._FastLoader is None, reason="PyYAML without LibYAML")
@pytest.mark.parametrize("text", SAMPLES + [p.read_text(encoding="utf-8") for p in sorted(
    [*ROOT.glob("*.yaml"), *ROOT.glob("rules/*.yaml"), *ROOT.glob("deploy/**/*.yaml")])])
def test_the_fast_loader_gives_the_same_values_and_positions(text: str) -> None:
    assert yamlpos._FastLoader is not None
    fast = yamlpos._load(yamlpos._FastLoader(text), "f.yaml")
    assert fast == yamlpos._load(yamlpos._Loader(text), "f.yaml")
    assert load_yaml(text, "f.yaml") == fast


@pytest.mark.parametrize("text", BROKEN)
def test_errors_are_the_pure_loaders_whatever_the_build(text: str) -> None:
    with pytest.raises(YamlError) as pure:
        yamlpos._load(yamlpos._Loader(text), "f.yaml")
    with pytest.raises(YamlError) as got:
        load_yaml(text, "f.yaml")
    assert got.value.problems == pure.value.problems
