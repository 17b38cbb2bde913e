# svdlib: two commands on a fresh machine with Python >= 3.10.
#
#   make test        create .venv if missing, install .[notebooks,test], run pytest + nbval
#   make reproduce   same environment; execute the notebook suite with papermill into results/
#   make test-perturbed   the same tests under another eigenbasis and rounding (CI runs it too)
#
# Variables (override on the command line, e.g. `make reproduce PROFILE=paper DATA=~/data`):
#   PYTHON   interpreter used to create .venv              (default: python3)
#   PROFILE  `profile` of the notebooks that declare it: quick (CPU minutes), long (the papers'
#            replicate counts, CPU) or paper (the papers' protocol, GPU)   (default: quick)
#   DATA     passed as parameter `data_root` to notebooks that declare it (default: unset)
#   ONLY     notebook numbers or names to run, e.g. ONLY="00 03"   (default: all)
#   RESULTS  where executed notebooks, figures and tables go      (default: results)
#   FORCE    non-empty: re-run notebooks that already finished     (default: unset)
#   JOBS     notebooks executed at the same time                   (default: 2)
#   EXTRAS   extras installed into .venv                           (default: notebooks,test)
#   PYTEST_ARGS  extra arguments for pytest, e.g. PYTEST_ARGS="-x -k sqrtm"
#   PERTURB  perturbation of `make test-perturbed` (default: similarity:1; see tests/_perturb.py)

PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= notebooks,test
PROFILE ?= quick
DATA ?=
ONLY ?=
RESULTS ?= results
FORCE ?=
JOBS ?= 2
PYTEST_ARGS ?=
PERTURB ?= similarity:1

# nbval re-executes the teaching notebooks (00-09) and compares their checked cells; the
# reproduction notebooks (10-19) train models, so tests/test_notebook_1*.py run each of them
# through papermill with its smallest overrides instead (issue 8), keeping CI short.
NBVAL_NOTEBOOKS ?= $(wildcard notebooks/0*.ipynb)

PY := $(VENV)/bin/python
comma := ,
# The stamp names the extras, so asking for other extras reinstalls; it depends on
# pyproject.toml, so editing dependencies reinstalls. Nothing else does.
STAMP := $(VENV)/.svdlib-installed-$(subst $(comma),-,$(EXTRAS))

# Tests and notebooks must not draw progress bars or open windows. (The notebook runner gives
# the kernels of `make reproduce` matplotlib's inline backend, which needs no display, so the
# executed notebooks carry their figures.)
export TQDM_DISABLE := 1
export MPLBACKEND := Agg
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install test test-perturbed reproduce lint clean distclean

help:
	@sed -n '1,18p' Makefile | sed 's/^# \{0,1\}//'

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "svdlib needs Python >= 3.10; $(PYTHON) is " + sys.version.split()[0] + ". Run: make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[$(EXTRAS)]'
	@# Fail here, not in the middle of the tests, if the resolver picked a torch and a
	@# torchvision that do not load together (e.g. a CPU-only torch without its torchvision).
	@$(PY) -c 'import importlib.util as u, torch; print("torch", torch.__version__); u.find_spec("torchvision") and print("torchvision", __import__("torchvision").__version__)'
	@touch $@

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests $(NBVAL_NOTEBOOKS) --nbval-lax --nbval-current-env $(PYTEST_ARGS)

# The suite again, with every eigendecomposition done on Q^T A Q for a fixed random orthogonal
# Q (tests/_perturb.py): the same mathematics, but other rounding and another eigenbasis inside
# eigenvalue clusters, as another CPU or LAPACK build would give. A test or checked notebook
# output that fails here bets on rounding or on the solver's choice of basis (issue 13).
test-perturbed: $(STAMP)
	SVDLIB_PERTURB='$(PERTURB)' $(PY) -m pytest tests $(NBVAL_NOTEBOOKS) --nbval-lax --nbval-current-env $(PYTEST_ARGS)

reproduce: $(STAMP)
	$(PY) -m svdlib.experiments.notebook --results '$(RESULTS)' --profile '$(PROFILE)' --jobs $(JOBS) \
		$(if $(DATA),--data-root '$(DATA)') $(if $(ONLY),--only $(ONLY)) $(if $(FORCE),--force)

# Optional: ruff is not part of any extra; installed into .venv on first use.
lint: $(STAMP)
	@$(PY) -m ruff --version >/dev/null 2>&1 || $(PY) -m pip install ruff
	$(PY) -m ruff check svdlib tests benchmarks

# Caches and build artefacts only: results/ and runs/ hold finished work and are kept.
clean:
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -path ./$(VENV) -prune -o -name .ipynb_checkpoints -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
