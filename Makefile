# Common commands. Everything runs from the project's virtual environment in .venv.
PY := .venv/bin/python

.PHONY: install demo test test-all lint bench

install:            ## install Slurm (root), the venv and hybridrec
	bash scripts/install.sh

demo:               ## the README's main job: a small sweep + results table
	bash scripts/demo.sh

test:               ## the README's test command (what CI runs)
	$(PY) -m pytest -q -m "not slow" tests

test-all:           ## everything, slow scenarios included
	$(PY) -m pytest -q tests

lint:
	.venv/bin/ruff check hybridrec jobs analysis benchmarks tests
