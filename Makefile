# tileskip — every target bootstraps .venv by itself on a fresh clone.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test sim bench bench-ptq tiles synth synth-modules train clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,synth]'
	touch $@

test: $(STAMP)
	$(PY) -m ruff check sw hw tb tests scripts
	PYTHONWARNINGS=error $(PY) -m pytest -q

# The demo network on the Verilated accelerator (the first run builds the simulator).
sim: $(STAMP)
	$(VENV)/bin/tileskip run --model demo-mnist --backend sim --json build/sim.json

# Benchmarks write results/*.json and the README's results section.
bench: $(STAMP)
	$(PY) scripts/bench.py
	$(PY) scripts/bench.py --config ecp5

tiles: $(STAMP)
	$(PY) scripts/tile_study.py

synth: $(STAMP)
	$(PY) scripts/synth_core.py

synth-modules: $(STAMP)
	$(PY) scripts/synth_modules.py

bench-ptq: $(STAMP)
	$(PY) scripts/bench_ptq.py

train: $(STAMP)
	$(PY) scripts/train_demo.py

clean:
	rm -rf build .pytest_cache .hypothesis
