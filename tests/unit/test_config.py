"""Typed configs: YAML + key=value overrides, coercion, and errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from llamaforge.config import ConfigError, config_help, config_to_dict, from_dict, load_config, parse_cli


@dataclass
class Inner:
    lr: float = 3e-4  # peak learning rate
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    steps: int = 10
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # autocast dtype

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"inner.steps must be at least 1, got {self.steps}")


@dataclass
class Outer:
    name: str = "demo"  # the run's name
    inputs: list[str] = field(default_factory=list)
    dim: int | None = None  # None keeps the preset's
    compile: bool = False
    inner: Inner = field(default_factory=lambda: Inner(steps=20))


def test_defaults_without_file_or_overrides():
    cfg = load_config(Outer)
    assert cfg == Outer()
    assert cfg.inner.steps == 20  # the parent's default for the section, not Inner's own


def test_overrides_are_coerced_to_the_field_types():
    cfg = load_config(
        Outer,
        overrides=["inner.lr=1.5e-4", "inner.steps=4_000", "inner.betas=0.8,0.99", "compile=true",
                   "dim=256", "inputs=a.txt,b/", "inner.precision=bf16", "name=x=y"],
    )
    assert cfg.inner.lr == 1.5e-4 and isinstance(cfg.inner.lr, float)
    assert cfg.inner.steps == 4000
    assert cfg.inner.betas == (0.8, 0.99)
    assert cfg.compile is True
    assert cfg.dim == 256
    assert cfg.inputs == ["a.txt", "b/"]
    assert cfg.inner.precision == "bf16"
    assert cfg.name == "x=y"  # only the first '=' separates key and value
    assert load_config(Outer, overrides=["dim=none"]).dim is None
    assert load_config(Outer, overrides=["inputs=[a, b]"]).inputs == ["a", "b"]


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    # YAML reads 3e-4 as a string (no dot); coercion still makes it a float.
    path.write_text("name: paper\ninner:\n  lr: 3e-4\n  steps: 100\n  betas: [0.9, 0.95]\ninputs: [x]\n")
    cfg = load_config(Outer, path, ["inner.steps=7"])
    assert cfg.name == "paper" and cfg.inputs == ["x"]
    assert cfg.inner.lr == 3e-4 and cfg.inner.steps == 7 and cfg.inner.betas == (0.9, 0.95)


def test_unknown_key_names_it_and_lists_the_allowed_keys():
    with pytest.raises(ConfigError) as e:
        load_config(Outer, overrides=["inner.learning_rate=1"])
    assert "inner.learning_rate" in str(e.value)
    assert "lr" in str(e.value) and "betas" in str(e.value)
    with pytest.raises(ConfigError, match="'nme'.*name, inputs, dim, compile, inner"):
        load_config(Outer, overrides=["nme=x"])


def test_bad_values_name_the_key_and_the_allowed_values():
    with pytest.raises(ConfigError, match=r"inner.precision: 'fp16' is not allowed; choose one of auto, fp32, bf16"):
        load_config(Outer, overrides=["inner.precision=fp16"])
    with pytest.raises(ConfigError, match=r"inner.steps: expected an integer, got '1.5'"):
        load_config(Outer, overrides=["inner.steps=1.5"])
    with pytest.raises(ConfigError, match=r"compile: expected true or false"):
        load_config(Outer, overrides=["compile=maybe"])
    with pytest.raises(ConfigError, match=r"inner.betas: expected 2 values"):
        load_config(Outer, overrides=["inner.betas=0.9"])
    with pytest.raises(ConfigError, match=r"inner is a section"):
        load_config(Outer, overrides=["inner=3"])
    with pytest.raises(ConfigError, match=r"key=value"):
        load_config(Outer, overrides=["compile"])


def test_validation_in_post_init_is_reported_with_the_section():
    with pytest.raises(ConfigError, match=r"inner.steps must be at least 1, got 0"):
        load_config(Outer, overrides=["inner.steps=0"])


def test_missing_or_malformed_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Outer, bad)


def test_resolved_config_round_trips_through_a_plain_dict():
    cfg = load_config(Outer, overrides=["inner.betas=0.5,0.6", "dim=8", "inputs=a"])
    plain = config_to_dict(cfg)
    assert plain["inner"]["betas"] == [0.5, 0.6]  # JSON/YAML friendly
    assert from_dict(Outer, plain) == cfg


def test_help_lists_every_key_with_default_choices_and_comment():
    text = config_help(Outer())
    for key in ("name=demo", "inputs=", "dim=None", "compile=False", "inner.lr=0.0003", "inner.betas=0.9,0.95",
                "inner.steps=20", "inner.precision=auto"):
        assert key in text
    assert "peak learning rate" in text and "auto|fp32|bf16" in text


def test_parse_cli_exits_with_a_message_on_bad_keys(capsys):
    with pytest.raises(SystemExit) as e:
        parse_cli(Outer, ["wat=1"], prog="llamaforge x", description="d")
    assert e.value.code == 2
    assert "unknown config key 'wat'" in capsys.readouterr().err
    assert parse_cli(Outer, ["inner.lr=1"], prog="x", description="d").inner.lr == 1.0


def test_parse_cli_takes_overrides_before_and_after_the_config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: from-file\ninner:\n  steps: 7\n")
    cfg = parse_cli(Outer, ["dim=8", "--config", str(path), "inner.lr=1", "compile=true"], prog="x", description="d")
    assert (cfg.dim, cfg.name, cfg.inner.steps, cfg.inner.lr, cfg.compile) == (8, "from-file", 7, 1.0, True)
