# The commands of the README (bench, smoke, test, perf). All create .venv on first use; nothing needs to be installed beforehand
# except Python >= 3.10 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= data

.PHONY: bench smoke test perf clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## The main job: generate MotionShapes `bench` (generator version 3), check it (every video, then the shortcut check:
## one frame must not tell the class, frame differences must), compute its optical flow and MSCL's
## motion screening, and run the CPU benchmark suite (every method, 3 seeds). The table goes to
## runs/cpu/report/ (published copy: results/cpu/).
bench: $(VENV)/.installed
	$(BIN)/vsbench data synth --preset bench --out $(DATA)/motionshapes-bench
	$(BIN)/vsbench data check $(DATA)/motionshapes-bench --min-frames 32
	$(BIN)/vsbench data shortcuts $(DATA)/motionshapes-bench
	$(BIN)/vsbench data flow $(DATA)/motionshapes-bench
	$(BIN)/vsbench data mds $(DATA)/motionshapes-bench --stride 4
	$(BIN)/vsbench run benchmarks/suites/cpu.toml

## The plumbing check: every method for a few steps on MotionShapes `small` (minutes, not a benchmark).
smoke: $(VENV)/.installed
	$(BIN)/vsbench data synth --preset small --out $(DATA)/motionshapes-small
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
