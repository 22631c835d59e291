# The two commands in the README. Each installs what it needs into .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint clean-dev

$(STAMP): pyproject.toml
	@echo "==> installing powerplane and its dependencies into $(VENV) (first run only)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

# Run the closed loop end to end on real servers (Kafka KRaft + time-series store) and narrate it.
demo: $(STAMP)
	@$(BIN)/powerplane demo

# Lint, type-check, then every test: unit tests and integration tests on real servers.
test: lint
	@echo "==> tests (unit + integration; integration tests start Kafka and VictoriaMetrics themselves)"
	@$(BIN)/pytest -q

lint: $(STAMP)
	@echo "==> ruff and mypy"
	@$(BIN)/ruff check .
	@$(BIN)/mypy
	@$(BIN)/lint-imports --no-cache

clean-dev: $(STAMP)
	@$(BIN)/powerplane dev down --wipe
