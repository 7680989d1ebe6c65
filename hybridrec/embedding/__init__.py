"""2D sparse-parallel item embedding (arXiv:2508.03854): rank groups (groups.py), lookup exchange
plan and byte theory (exchange.py), the sharded table with all-to-all lookups and replica sync
(sharded.py), row-wise / momentum-scaled row-wise AdaGrad (rowwise_adagrad.py), per-rank memory
accounting (memory.py) and a small quality check on synthetic sequences (quality.py)."""
