# Common commands. Everything runs from the project's virtual environment in .venv.
# `make` or `make help` lists the targets.
PY := .venv/bin/python

.PHONY: help install demo test test-all lint bench
.DEFAULT_GOAL := help

help:               ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):[^#]*## (.*)/  make \1\t\2/' | expand -t 20

install:            ## install Slurm + munge (root), the venv and hybridrec (scripts/install.sh)
	bash scripts/install.sh

demo:               ## the README's demo: a small sweep on a private Slurm cluster + results table
	bash slurm/demo.sh

test:               ## the README's test command (what CI runs; slow scenarios left out)
	$(PY) -m pytest -q -m "not slow" tests

test-all:           ## every test, slow scenarios included
	$(PY) -m pytest -q tests

lint:               ## ruff over the code and tests
	.venv/bin/ruff check hybridrec jobs analysis benchmarks tests

bench:              ## quick benchmarks (~10-30 s): flat vs hierarchical all-reduce, 1-process training throughput
	$(PY) benchmarks/allreduce.py --sizes-mib 1,4 --orders rack --repeats 1
	$(PY) benchmarks/train_throughput.py --items 420 --steps 5
