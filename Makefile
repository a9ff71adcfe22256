# The whole set-up on a fresh machine is `make demo` or `make test`: both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test install clean

$(BIN)/vlprompt: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH) -e ".[dev]"
	# Build and keep the Lightning subcommands' help texts once (vlprompt/help_cache.py): later `--help` is instant.
	for command in fit validate test; do $(BIN)/vlprompt $$command --help > /dev/null; done
	touch $@

install: $(BIN)/vlprompt

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/python tools/demo.py

clean:
	rm -rf runs data .pytest_cache
