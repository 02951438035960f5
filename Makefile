# Two commands do everything on a fresh machine:
#   make run    # set up, then run notebooks 01-04 with papermill (PROFILE=paper on CUDA, quick on CPU)
#   make test   # set up, then pytest + nbval over the notebooks (smoke profile); make browser-test: a real browser
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?= auto

.PHONY: setup run test browser-test benchmarks clean-runs

$(BIN)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q -e . --no-deps
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

setup: $(BIN)/.installed

run: setup
	$(BIN)/python -m dambq.workbook --profile $(PROFILE)

test: setup
	DAMBQ_RUNS=$$(mktemp -d) $(BIN)/python -m pytest -q --doctest-modules --ignore-glob='notebooks/*.py' --ignore=tests/browser --nbval-lax --nbval-current-env dambq tests notebooks

# JupyterLab + headless Chromium (Debian: apt-get install chromium chromium-driver): notebooks 01 and 03
# run in a real browser, a slider moved, "Run LBA" pressed, every figure checked for pixels
browser-test: setup
	$(BIN)/python -m pytest -q -p no:logging tests/browser

benchmarks: setup
	$(BIN)/python benchmarks/step_speed.py
	$(BIN)/python benchmarks/quant_error.py

clean-runs:
	rm -rf runs
