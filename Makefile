# The two commands in the README. Each installs what it needs into .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test debian-packages lint clean-dev

$(STAMP): pyproject.toml
	@echo "==> installing powerplane and its dependencies into $(VENV) (first run only)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

# Run the closed loop end to end on real servers (Kafka KRaft + time-series store) and narrate it.
demo: $(STAMP)
	@$(BIN)/powerplane demo

# Lint, type-check, then every test: unit tests and integration tests on real servers. The Debian packages
# those servers come from are installed first when missing (scripts/ensure-debian-packages: a few
# `command -v` when nothing is).
test: debian-packages lint
	@echo "==> tests (unit + integration; integration tests start their own Kafka, VictoriaMetrics, InfluxDB, Alertmanager)"
	@$(BIN)/pytest -q

debian-packages:
	@scripts/ensure-debian-packages

lint: $(STAMP)
	@echo "==> ruff and mypy"
	@$(BIN)/ruff check .
	@$(BIN)/mypy
	@$(BIN)/lint-imports --no-cache

clean-dev: $(STAMP)
	@$(BIN)/powerplane dev down --wipe
