# Every target sets itself up: a .venv at the repo root, (re)installed whenever requirements.lock
# changes (the stamp file's name carries the lock's hash).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
LOCK_HASH := $(shell sha256sum requirements.lock 2>/dev/null | cut -c1-16)
STAMP := $(VENV)/.installed-$(LOCK_HASH)
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: setup test test-lib test-notebooks demo bench clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

test: test-lib test-notebooks

test-lib: $(STAMP)
	$(PY) -m pytest tests/ -q

# Notebooks run through nbmake; an empty notebooks/ folder passes (nothing to run yet). The whole
# set takes 2.7 min on 2 idle cores with the encoders built, about 19 min on a fresh machine (00 builds
# them); a cell may take 15 min on a loaded machine before it counts as hung (nbmake's default,
# 5 min, failed cells of 03 and 04 while another job held the cores).
test-notebooks: $(STAMP)
	@if ls notebooks/*.ipynb >/dev/null 2>&1; then \
		$(PY) -m pytest --nbmake --nbmake-timeout=900 notebooks/ -q; \
	else echo "notebooks/: no notebooks yet, nothing to run"; fi

# `make demo ARGS="--preset smol"` uses the real SmolLM2 LM (pip extra `smol`).
demo: $(STAMP)
	$(PY) -m flamingo_lib.cli.demo $(ARGS)

clean:
	rm -rf $(VENV) runs reports .pytest_cache

# Benchmarks (bench/README.md). The reference implementations (lucidrains flamingo-pytorch,
# open_flamingo) are baselines, never dependencies: pip --target puts them, without their deps,
# in bench/.baselines (git-ignored); .venv is not touched. Re-installed when their pins change.
BASELINES := bench/.baselines
BASELINES_STAMP := $(BASELINES)/.installed-$(shell sha256sum bench/requirements-baselines.txt 2>/dev/null | cut -c1-16)

$(BASELINES_STAMP): bench/requirements-baselines.txt
	rm -rf $(BASELINES)
	$(PY) -m pip install -q --no-deps --target $(BASELINES) -r bench/requirements-baselines.txt
	@touch $@

.PHONY: bench-smoke

# Full CPU run (~8 min on a 2-core machine; one torch thread, timed by its CPU time: see
# bench/README.md): writes bench/RESULTS.md and bench/results.json.
bench: $(STAMP) $(BASELINES_STAMP)
	BENCH_COMMAND="make bench" $(PY) -m bench.run

# Toy sizes, one repetition (< 1 min): keeps the benchmark code working; writes bench/.smoke/.
bench-smoke: $(STAMP) $(BASELINES_STAMP)
	BENCH_COMMAND="make bench-smoke" $(PY) -m bench.run --smoke --compile
