"""The floor's one dotted-key setter, one comma-separated-number reader and one lookup of a config by name."""
from __future__ import annotations

from pathlib import Path

import pytest

from copd_ifm import config as cfg
from copd_ifm.errors import UserError


def test_set_dotted_creates_missing_groups_and_refuses_to_descend_into_a_value():
    tree: dict = {"optim": {"lr": 0.1}, "data": None}
    cfg.set_dotted(tree, "optim.lr", 0.5)
    cfg.set_dotted(tree, "data.crop_size", 32)          # a null group becomes one
    cfg.set_dotted(tree, "loss.epsilon", 0.1)
    cfg.set_dotted(tree, "seed", 3)
    assert tree == {"optim": {"lr": 0.5}, "data": {"crop_size": 32}, "loss": {"epsilon": 0.1}, "seed": 3}
    with pytest.raises(UserError, match=r"--set optim\.lr\.x: 'lr' is not a group of fields"):
        cfg.set_dotted(tree, "optim.lr.x", 1)
    assert cfg.apply_overrides({}, ["a.b=1", "a.c=[1, 2]"]) == {"a": {"b": 1, "c": [1, 2]}}


@pytest.mark.parametrize("text, values", [("0.1,0.5", [0.1, 0.5]), (" 0.2 , 1 ,", [0.2, 1.0]), ("-3", [-3.0])])
def test_parse_floats_reads_comma_separated_numbers(text, values):
    assert cfg.parse_floats(text, "--eps") == values


@pytest.mark.parametrize("text, message", [("0.1,x", "--tau '0.1,x': give comma-separated numbers"),
                                           (" , ", "--tau is empty")])
def test_parse_floats_refuses_anything_else_naming_the_flag(text, message):
    with pytest.raises(UserError, match=message):
        cfg.parse_floats(text, "--tau")


def test_named_config_takes_a_name_or_a_path_and_lists_the_known_names(tmp_path):
    assert cfg.named_config("vision", "cpu_tiny") == cfg.CONFIG_DIR / "vision" / "cpu_tiny.yaml"
    own = tmp_path / "mine"
    own.write_text("epochs: 1\n", encoding="utf-8")
    assert cfg.named_config("vision", str(own)) == own                  # an existing file, whatever its name
    assert cfg.named_config("vision", "elsewhere.yaml") == Path("elsewhere.yaml")   # read_yaml reports it
    with pytest.raises(UserError, match=r"--cohort 'nope': unknown cohort \(known in .*cohorts: .*demo.*; or give a "
                                        r"cohort YAML\)"):
        cfg.named_config("cohorts", "nope", "--cohort", "cohort", "a cohort YAML")
