# `make demo`, `make test`, `make docs` and `make bench` each create .venv when it is missing and install what they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --disable-pip-version-check -q

.PHONY: demo test test-fast docs bench clean chromium

$(VENV)/.core: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

$(VENV)/.test: $(VENV)/.core
	$(PIP) -e '.[test]'
	touch $@

$(VENV)/.docs: $(VENV)/.core
	$(PIP) -e '.[docs]'
	touch $@

# A headless browser for the HTML-report test (Debian's chromium); best effort, the test skips without it.
chromium:
	@command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1))) || \
	  echo "note: chromium not installed; the browser test will be skipped"

demo: $(VENV)/.core
	$(VENV)/bin/faithmap explain --method igos --out demo_out

test: $(VENV)/.test chromium
	$(PY) -m pytest -q

# The quick loop while developing: everything but the end-to-end tests on the real default model.
test-fast: $(VENV)/.test
	$(PY) -m pytest -q -m "not slow"

# The documentation site into site/: the generated tables must be current, warnings are errors (broken
# links and references, a failing tutorial), then a headless browser opens the quick start.
docs: $(VENV)/.docs chromium
	$(VENV)/bin/faithmap docs --check
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
	$(PY) -m pytest -q -p no:cacheprovider tests/test_docs_site.py

# The benchmarks (bench/, not in the package): `make bench` lists them; `make bench BENCH="deletion --repeats 2"`
# runs one (the same as `python -m bench deletion --repeats 2` in .venv). The peers they compare with are test extras.
BENCH ?=
bench: $(VENV)/.test
	$(PY) -m bench $(BENCH)

clean:
	rm -rf $(VENV) demo_out site
