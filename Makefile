# Edge Recommender: the two commands are `make demo` and `make test`.
PYTHON   ?= python3
VENV     ?= .venv
DATASETS ?= ../shared/datasets
PY        = $(VENV)/bin/python
STAMP     = $(VENV)/.installed

export EDGE_REC_DATASETS := $(abspath $(DATASETS))
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help demo test test-arm64 lint typecheck install lock mosquitto nginx chromium wrk bench bench-scale bench-fleet-aggregates soak clean

help:
	@echo "make demo   train on Online Retail, publish over MQTT, serve recommendations from an edge agent"
	@echo "make test   lint, type checks and the test suite (real Mosquitto, real LiteRT, real HTTP)"
	@echo "make bench  benchmarks; results in bench/results/"
	@echo "make test-arm64  the agent on an emulated Raspberry Pi OS 64-bit (Debian bookworm arm64, qemu); root"
	@echo "make bench-scale  trainer stages (prepare, train, export, evaluate) on generated shops of 1M and 10M"
	@echo "            events: wall time and peak RSS, bench/results/scale.json (SCALE_ARGS=--with-100m adds 100M)"
	@echo "make soak   10 min of mixed traffic with a model update each minute; bench/results/soak.json"
	@echo "make lock   regenerate requirements/{edge,trainer,dev}.lock (hashed pins; LOCK_ARGS=--upgrade to move them)"
	@echo "variables: DATASETS=$(DATASETS) VENV=$(VENV)"

# The dependencies come from the hashed lock (pip itself included), the project editable without deps.
$(STAMP): pyproject.toml requirements/dev.lock
	@echo "==> creating $(VENV) and installing edge-recommender[edge,trainer,dev] from requirements/dev.lock"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements/dev.lock
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $@

install: $(STAMP)

# Hashed pins of the edge, trainer and dev installs from PyPI alone (this machine's pip configuration,
# find-links and constraints are left out). pip-compile resolves for the running interpreter, Python 3.11
# on Linux; the hashes cover every file of each pinned version (x86_64 and aarch64 wheels alike).
PIP_COMPILE = env -u PIP_FIND_LINKS -u PIP_CONSTRAINT -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	--strip-extras --no-emit-index-url --index-url https://pypi.org/simple $(LOCK_ARGS)
lock: $(STAMP)
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "make lock: run it with Python 3.11")'
	$(PIP_COMPILE) --extra edge -o requirements/edge.lock pyproject.toml
	$(PIP_COMPILE) --extra trainer -o requirements/trainer.lock pyproject.toml
	$(PIP_COMPILE) --extra edge --extra trainer --extra dev -o requirements/dev.lock pyproject.toml

mosquitto:
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "==> installing mosquitto (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; \
	else \
		echo "mosquitto is missing: install it with 'sudo apt-get install -y mosquitto' (Debian/Ubuntu)" >&2; exit 1; \
	fi

# Bundle delivery from an HTTP(S) origin (tests/test_origin_*.py) and the fleet simulation's origin
# (tests/test_fleet_scale_sim.py, bench/fleet_scale.py) run a real nginx as this user.
nginx:
	@if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "==> installing nginx-light (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null; \
	else \
		echo "nginx is missing: install it with 'sudo apt-get install -y nginx-light' (Debian/Ubuntu)" >&2; exit 1; \
	fi

# The console's browser test (tests/test_console.py) drives a real headless Chromium.
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "==> installing chromium (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "chromium is missing: install it with 'sudo apt-get install -y chromium' (Debian)" >&2; exit 1; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check shared edge_agent cloud_trainer devtools tests scripts bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy shared edge_agent

test: $(STAMP) mosquitto nginx chromium lint typecheck
	$(PY) -m pytest

# The root file system is built once and cached outside the repo (devtools/arm64_rootfs.sh).
test-arm64: $(STAMP) mosquitto
	@rootfs="$$(bash devtools/arm64_rootfs.sh)" && \
	EDGE_REC_ARM64_ROOTFS="$$rootfs" $(PY) -m pytest tests/arm64 -v -p no:cacheprovider

demo: $(STAMP) mosquitto
	$(PY) scripts/demo.py --datasets "$(EDGE_REC_DATASETS)"

wrk:
	@if command -v wrk >/dev/null 2>&1 && command -v hey >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "==> installing wrk (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk hey >/dev/null; \
	else \
		echo "wrk is missing: 'sudo apt-get install -y wrk' (the HTTP benchmark needs it)" >&2; exit 1; \
	fi

# MQTT-only delivery at 5,000 agents x 10 MB (50 GB through the simulator) is too slow here: measured at
# 1 MB and modelled (bench/README.md, Fleet scale).
FLEET_SCALE_ARGS ?= --mqtt-model-mb-largest 1
bench: $(STAMP) mosquitto nginx wrk
	$(PY) bench/history.py
	$(PY) bench/serving.py
	$(PY) bench/stock.py
	$(PY) bench/fleet.py
	$(PY) bench/cold_start.py
	$(PY) bench/outcomes.py
	$(PY) bench/fleet_scale.py $(FLEET_SCALE_ARGS)

# Quality kept by training on simulated stores' fleet aggregates instead of raw events (Online
# Retail; several trainings and evaluations, about 10 minutes): not part of `make bench`.
bench-fleet-aggregates: $(STAMP)
	$(PY) bench/fleet_aggregates.py

# Long (the 10M point trains for many minutes): not part of `make bench`.
bench-scale: $(STAMP)
	$(PY) bench/scale.py $(SCALE_ARGS)

soak: $(STAMP) mosquitto wrk
	$(PY) bench/soak.py

clean:
	rm -rf $(VENV) var demo-work .pytest_cache .mypy_cache .ruff_cache
