"""conf/experiment/*: every point of every experiment's `hydra.sweeper.params` composes against the real
schemas (conf/config.yaml + RunConfig) and passes preflight for the launcher's world size, and the sweeps
expand to the paper's points (layouts, k values, algorithms)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from hybridrec.config import register_configs, to_run_config
from hybridrec.config.telemetry import TelemetryConfig, validate_telemetry
from hybridrec.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _points(experiment: str) -> list[tuple[list[str], object]]:
    """(overrides, composed cfg with hydra node) for every point of the experiment's sweep."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        base = compose("config", overrides=[f"+experiment={experiment}"], return_hydra_config=True)
        params = OmegaConf.to_container(base.hydra.sweeper.params) or {}
        axes = [[f"{key}={value.strip()}" for value in str(values).split(",")] for key, values in params.items()]
        points = []
        for combo in itertools.product(*axes):
            overrides = [f"+experiment={experiment}", *combo]
            points.append((overrides, compose("config", overrides=overrides, return_hydra_config=True)))
    return points


def test_experiment_files_exist() -> None:
    assert {"paper_table2", "hier_vs_ring", "hier_vs_ring_4n", "topk_sweep", "load_imbalance"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_sweep_point_composes_and_passes_preflight(experiment: str) -> None:
    from hybridrec import preflight

    points = _points(experiment)
    assert len(points) >= 2, f"{experiment} sweeps nothing"
    for overrides, cfg in points:
        world = cfg.hydra.launcher.nodes * cfg.hydra.launcher.tasks_per_node
        hydra_free = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        run_cfg = to_run_config(hydra_free)
        layout = preflight.validate(run_cfg, world)
        assert layout.tp * layout.pp * layout.dp == world, overrides
        assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")


def test_paper_table2_covers_single_mode_and_hybrid_layouts_on_one_global_batch() -> None:
    points = _points("paper_table2")
    layouts = {(c.parallel.tp, c.parallel.pp, c.parallel.dp) for _, c in points}
    assert {(1, 1, 4), (4, 1, 1), (1, 4, 1)} <= layouts  # DP, TP, PP single mode
    assert any(sum(x > 1 for x in layout) >= 2 for layout in layouts)  # hybrids
    assert len({c.train.global_batch_size for _, c in points}) == 1
    assert len({c.name for _, c in points}) == len(points)  # each row of the table has its own scheme name


def test_topk_sweep_has_the_paper_ratios_and_a_dense_baseline() -> None:
    codecs = {(c.compression.codec, c.compression.ratio if c.compression.codec == "topk" else None)
              for _, c in _points("topk_sweep")}
    assert codecs == {("none", None), ("topk", 0.01), ("topk", 0.1), ("topk", 0.5)}


def test_hier_vs_ring_compares_algorithms_at_two_and_four_nodes() -> None:
    for experiment, nodes in (("hier_vs_ring", 2), ("hier_vs_ring_4n", 4)):
        points = _points(experiment)
        assert {c.allreduce.algorithm for _, c in points} == {"flat", "hierarchical"}
        assert {c.hydra.launcher.nodes for _, c in points} == {nodes}


def test_demo_sweeps_sync_schemes_and_a_pipeline_layout_one_rank_per_node() -> None:
    points = _points("demo")
    schemes = {(c.allreduce.algorithm, c.compression.codec,
                c.compression.ratio if c.compression.codec == "topk" else None, c.parallel.pp) for _, c in points}
    assert schemes == {("flat", "none", None, 1), ("hierarchical", "none", None, 1), ("hierarchical", "topk", 0.01, 1),
                       ("hierarchical", "topk", 0.1, 1), ("hierarchical", "none", None, 2)}
    # one rank per node (slurm/demo.sh gives each node one CPU: one point at a time, timed alone);
    # racks from Slurm's topology; compression only where the uplink is slow
    assert {(c.hydra.launcher.nodes, c.hydra.launcher.tasks_per_node) for _, c in points} == {(4, 1)}
    assert {(c.allreduce.topology, c.compression.hops) for _, c in points} == {("slurm", "cross_rack")}
    assert len({c.name for _, c in points}) == len(points)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "telemetry").glob("*.yaml")))
def test_telemetry_group_files_match_the_schema(name: str) -> None:
    data = OmegaConf.load(CONF / "telemetry" / f"{name}.yaml")
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TelemetryConfig), data))
    validate_telemetry(cfg)


def test_bad_telemetry_values_are_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="telemetry.nvml_interval_s"):
        validate_telemetry(TelemetryConfig(nvml_interval_s=0))
    with pytest.raises(ConfigError, match="telemetry.flush_every_steps"):
        validate_telemetry(TelemetryConfig(flush_every_steps=0))


def test_telemetry_group_overrides_the_run_config() -> None:
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = to_run_config(compose("config", overrides=["telemetry=fine"]))
    assert cfg.telemetry.flush_every_steps == 1 and cfg.telemetry.nvml_interval_s == 0.1
