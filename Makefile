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

# Notebooks run through nbmake; an empty notebooks/ folder passes (nothing to run yet).
test-notebooks: $(STAMP)
	@if ls notebooks/*.ipynb >/dev/null 2>&1; then \
		$(PY) -m pytest --nbmake notebooks/ -q; \
	else echo "notebooks/: no notebooks yet, nothing to run"; fi

demo: $(STAMP)
	$(PY) -m flamingo_lib.demo

clean:
	rm -rf $(VENV) runs reports .pytest_cache
