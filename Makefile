# Two commands on a fresh machine with Python 3.11+ and make: `make run`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 7000
# The demo users `make run` accepts (alice/demo-alice, bob/demo-bob, carol/demo-carol).
USERS ?= examples/demo-users.txt

.PHONY: run test lint check proto bench-micro clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "tickwire needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

# The C build of the read fast path (server/fastpath.py, Cython), redone whenever its
# source or setup.py changes (the server does not use a build older than either; the
# generated C goes too, since Cython does not notice a changed directive). Without a C
# compiler setup.py goes on without it, and the source runs interpreted.
$(VENV)/.fastpath: server/fastpath.py setup.py | $(VENV)/.installed
	$(BIN)/python -c 'import server.fastpath as f; raise SystemExit(not f.built_fresh())' \
		|| (rm -f server/fastpath.c && $(BIN)/python -m pip install -q --no-deps -e .)
	@$(BIN)/python -c 'import server.fastpath as f; print("read fast path:", \
		"compiled" if f.built_fresh() else "interpreted (it could not be compiled: no C compiler?)")'
	touch $@

# The fast path is checked after the install, never beside it: under `make -j` two
# `pip install -e` would otherwise run into one venv at once.
run: $(VENV)/.installed
	@$(MAKE) -s --no-print-directory $(VENV)/.fastpath
	$(BIN)/tickwire serve --host $(HOST) --port $(PORT) --set users_file=$(USERS)

test: $(VENV)/.installed-dev
	@$(MAKE) -s --no-print-directory $(VENV)/.fastpath
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

check: lint test

# Regenerate protocol/proto/*_pb2.py(i) from the .proto sources; the result is committed.
proto: $(VENV)/.installed-dev
	$(BIN)/python -m tools.protogen

# pytest-benchmark micro-benchmarks (codec, registry, dispatch); not part of `make test`'s timing.
bench-micro: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q tests/bench --benchmark-enable --benchmark-only

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .benchmarks
