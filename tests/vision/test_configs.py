"""The vision configs (``configs/vision/*.yaml``): each resolves, and a family member that inherits another with
``base:`` differs from it only in the fields it names."""
from __future__ import annotations

from copd_ifm import config as cfg
from natural_images.config import VISION_CONFIG_DIR, VisionConfig
from natural_images.run import load_vision_config


def test_every_config_resolves_and_a_family_member_changes_only_the_fields_it_names():
    members = 0
    for path in sorted(VISION_CONFIG_DIR.glob("*.yaml")):
        assert load_vision_config(path.stem).data.dataset     # by name, as `vision pretrain --config NAME`
        resolved = cfg.flatten(cfg.to_dict(cfg.load(VisionConfig, path)))   # the YAMLs alone (no size probing)
        own = cfg.read_yaml(path)
        if "base" not in own:
            continue
        members += 1
        base = cfg.flatten(cfg.to_dict(cfg.load(VisionConfig, cfg.named_config("vision", own.pop("base")))))
        changed = {key for key, value in resolved.items() if base[key] != value}
        assert changed and changed <= set(cfg.flatten(own)), path.name
    assert members >= 15    # the CIFAR/STL10/tinyImageNet, Trifeature/digits/folder and AdCo families
