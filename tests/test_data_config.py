"""Every conf/data/*.yaml composes under Hydra against the DataConfig schema and loads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from hybridrec.config import register_configs
from hybridrec.config.data import DataConfig

CONF_DATA = Path(__file__).resolve().parents[1] / "conf" / "data"
GROUP_FILES = sorted(p.stem for p in CONF_DATA.glob("*.yaml"))


def test_the_expected_data_configs_exist() -> None:
    assert {"synthetic_tiny", "synthetic_paper", "ml100k", "amazon2014", "amazon2018", "amazon2023"} <= \
        set(GROUP_FILES)


@pytest.mark.parametrize("name", GROUP_FILES)
def test_data_group_file_composes_into_a_typed_data_config(tmp_path: Path, name: str) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DATA, conf / "data")
    (conf / "config.yaml").write_text("defaults:\n  - data: synthetic_tiny\n  - _self_\n")
    register_configs()
    GlobalHydra.instance().clear()
    overrides = [f"data={name}"] + (["data.path=/data/file.json.gz"] if name.startswith("amazon") else [])
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    data = OmegaConf.to_object(cfg.data)
    assert isinstance(data, DataConfig)
    assert data.source == name.split("_")[0]
    assert data.item_text == name.endswith("_text")
    if name.startswith("synthetic"):
        assert data.synthetic_scale == name.split("_")[1]


def test_unknown_field_in_a_data_file_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DATA, conf / "data")
    (conf / "data" / "broken.yaml").write_text("defaults:\n  - data_schema\n  - _self_\nsource: synthetic\nkcores: 3\n")
    (conf / "config.yaml").write_text("defaults:\n  - data: broken\n  - _self_\n")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"), pytest.raises(Exception, match="kcores"):
        compose(config_name="config")
