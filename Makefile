PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser demo test lint bench clean

# installing reports on stderr, so that `make bench` prints nothing but its JSON on stdout
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) >&2
	@echo "installing monitor and its dependencies into $(VENV) ..." >&2
	@$(BIN)/python -m pip install --quiet --upgrade pip >&2
	@$(BIN)/python -m pip install --quiet -e '.[dev]' >&2
	@touch $(STAMP)

install: $(STAMP)

# `make demo ARGS=--keep`: then the daemon and its status page (127.0.0.1:9464) stay up
demo: $(STAMP)
	$(BIN)/monitor demo $(ARGS)

# the status page is tested in a real headless Chromium (Debian's chromium + chromium-driver):
# installed with apt where that is possible (root, apt-get present); elsewhere its tests
# skip and say why
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium and chromium-driver (apt) for the status page tests ..." >&2; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium chromium-driver; } >&2 \
		|| echo "could not install chromium: the browser tests will be skipped" >&2; \
	else echo "no chromium/chromedriver and no apt as root: the browser tests will be skipped" >&2; \
	fi

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check monitor tests bench
	$(BIN)/mypy --strict monitor
	$(BIN)/lint-imports

bench: $(STAMP)
	@$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
