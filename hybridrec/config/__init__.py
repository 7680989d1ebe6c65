"""Typed config schemas (one module per Hydra group) composed into `RunConfig` and registered
with Hydra's ConfigStore so YAML files under conf/ are validated against them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hybridrec.config.comm import AllreduceConfig, CompressionConfig
from hybridrec.config.data import DataConfig
from hybridrec.config.embedding import EmbeddingConfig
from hybridrec.config.model import ModelConfig
from hybridrec.config.parallel import ParallelConfig
from hybridrec.config.telemetry import TelemetryConfig
from hybridrec.config.train import EvalConfig, TrainConfig


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    allreduce: AllreduceConfig = field(default_factory=AllreduceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    # where results go; under Hydra this is the run's output directory
    output_dir: str = ""
    # free-form name shown in tables (e.g. "hybrid tp2-pp2-dp2")
    name: str = ""


GROUP_SCHEMAS: dict[str, Any] = {
    "data": DataConfig,
    "model": ModelConfig,
    "parallel": ParallelConfig,
    "compression": CompressionConfig,
    "allreduce": AllreduceConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "telemetry": TelemetryConfig,
    "embedding": EmbeddingConfig,
}


def register_configs() -> None:
    """Register the schemas so `conf/config.yaml` and each group's YAML are type-checked."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="run_schema", node=_open_mappings(RunConfig, "allreduce."))
    for group, schema in GROUP_SCHEMAS.items():
        store.store(group=group, name=f"{group}_schema",
                    node=_open_mappings(schema, "") if group == "allreduce" else schema)


def _open_mappings(schema: Any, prefix: str) -> Any:
    """The schema as a node whose free-form mappings (`allreduce.racks`: rack name -> hosts) accept new
    keys, so the plain override `allreduce.racks={rack1:[n1,n2],rack2:[n3,n4]}` composes (Hydra's struct
    mode would otherwise ask for `+allreduce.racks=...`); every other key stays strictly checked."""
    from omegaconf import OmegaConf

    node = OmegaConf.structured(schema)
    for path in OPEN_MAPPINGS:
        OmegaConf.set_struct(OmegaConf.select(node, prefix + path), False)
    return node


OPEN_MAPPINGS = ("racks",)


def to_run_config(cfg: Any) -> RunConfig:
    """Turn a Hydra DictConfig (or plain dict) into a typed RunConfig."""
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


__all__ = [
    "AllreduceConfig", "CompressionConfig", "DataConfig", "EmbeddingConfig", "EvalConfig", "ModelConfig",
    "ParallelConfig", "RunConfig", "TelemetryConfig", "TrainConfig", "register_configs", "to_run_config",
]
