# The two commands a new user needs: `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo
DEMO_SUITE ?= mt3
DEMO_EPISODES ?= 20
# Extras installed by setup. `gpu` (TensorRT) is added only where an NVIDIA driver is present:
# its wheels are fetched from NVIDIA's own index, which CPU-only CI machines cannot reach.
EXTRAS ?= ros,lerobot,dev$(shell command -v nvidia-smi >/dev/null 2>&1 && echo ,gpu)
APT_PACKAGES := libegl1 libgl1-mesa-dri libegl-mesa0 libosmesa6
# The ROS 2 package (Python module mt_policy_ros), installed editable so the serve node runs without colcon.
ROS_PKG := ros2_ws/src/mt_policy
# A fresh .venv takes about 10 GB (torch 2.10 with its CUDA libraries is 7 GB of it). Checking first
# turns pip's late "No space left on device" into a message that says what is needed.
SETUP_MIN_FREE_GB ?= 11

.PHONY: setup system-deps disk-check demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(ROS_PKG)/setup.py
	@$(MAKE) --no-print-directory disk-check
	@$(MAKE) --no-print-directory system-deps
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install --progress-bar off -e $(ROS_PKG)
	@touch $(STAMP)

# Headless MuJoCo rendering (EGL, with OSMesa as the fallback). Installs only what is missing.
system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for headless rendering: $$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# Only a fresh .venv is checked: updating an existing one needs little more space.
disk-check:
	@if [ ! -x $(BIN)/python ]; then \
	  free_kb=$$(df -Pk . | awk 'NR==2 {print $$4}'); \
	  if [ "$$free_kb" -lt $$(( $(SETUP_MIN_FREE_GB) * 1024 * 1024 )) ]; then \
	    echo "setup: a fresh $(VENV) needs about $(SETUP_MIN_FREE_GB) GB free on the disk holding $(CURDIR)," \
	         "but only $$(( free_kb / 1024 / 1024 )) GB is free. Free some space, or run with" \
	         "SETUP_MIN_FREE_GB=0 to try anyway." >&2; \
	    exit 1; \
	  fi; \
	fi

demo: setup
	$(BIN)/mt-policy demo --suite $(DEMO_SUITE) --episodes $(DEMO_EPISODES) --out $(DEMO_DIR)

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/collect.py

clean:
	rm -rf $(VENV) runs .pytest_cache
