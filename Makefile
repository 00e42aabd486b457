# The two commands of the README. Both create .venv on first use; nothing needs to be installed beforehand
# except Python >= 3.10 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= data

.PHONY: bench test perf clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## The main job: generate MotionShapes (small preset), check it, compute its optical flow and MSCL's
## motion screening, and run the smoke suite on the CPU.
bench: $(VENV)/.installed
	$(BIN)/vsbench data synth --preset small --out $(DATA)/motionshapes-small
	$(BIN)/vsbench data check $(DATA)/motionshapes-small
	$(BIN)/vsbench data flow $(DATA)/motionshapes-small
	$(BIN)/vsbench data mds $(DATA)/motionshapes-small --stride 4
	$(BIN)/vsbench run benchmarks/suites/smoke.toml

## The test suite (CPU, under 10 minutes on 2 cores).
test: $(VENV)/.installed
	$(BIN)/python -m pytest tests -q

## Throughput benchmarks (pytest-benchmark; not part of the tests).
perf: $(VENV)/.installed
	$(BIN)/python -m pytest benchmarks/perf --benchmark-only -q

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
