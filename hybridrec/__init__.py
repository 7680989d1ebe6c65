"""hybridrec: hybrid-parallel training of sequential recommenders on megatron-core, driven by Slurm."""

__version__ = "0.1.0"
