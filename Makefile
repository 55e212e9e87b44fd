# Everything a fresh machine needs, done by the targets themselves:
#   make demo   runs the main job (see README)
#   make test   runs the whole test suite
# Both create .venv at the repo root when missing, install the project into it with its
# dev extra, and install the system graphviz package when the `dot` program is missing, the
# system postgresql package when `pg_ctl` is (for the distributed-search tests) and Debian's
# dataset-fashion-mnist when its files are (`--dataset fashion-mnist`).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup graphviz postgresql fashion-mnist demo test lint clean

setup: $(STAMP) graphviz postgresql fashion-mnist

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch and torchvision are pinned in pyproject.toml; pip takes them from the
	# machine's wheel cache where it has one.
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# $(call apt_install,PACKAGE,WHY): the Debian package, through sudo unless we are root.
apt_install = echo "installing the system $(1) package ($(2))"; \
	SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq $(1) >/dev/null

graphviz:
	@command -v dot >/dev/null 2>&1 || { $(call apt_install,graphviz,for the dot program); }

# The distributed-search tests start a throwaway PostgreSQL server (tests/postgres.py).
postgresql:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 \
	  || { $(call apt_install,postgresql,for the distributed-search tests); }

# Real data for the search: 70,000 28x28 images, in /usr/share/datasets/fashion-mnist/
fashion-mnist:
	@ls /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz >/dev/null 2>&1 \
	  || [ -d "$${NASGRAPH_DATA:-/nonexistent}/fashion-mnist" ] \
	  || { $(call apt_install,dataset-fashion-mnist,for --dataset fashion-mnist); }

demo: setup
	$(BIN)/nasgraph search residual --dataset digits --budget 200k --time-budget 2m \
	  --epochs 9 --screen 64 --final-seeds 3 --final-share 0.34 --study demo

test: setup
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
