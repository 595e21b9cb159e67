# flashhead: `make demo` installs everything and renders a talking video; `make test` runs the suite
# (CI runs it); `make test-fast` leaves out the tests marked slow, for development.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_TEXT ?= Hello! I am a talking portrait, rendered on your own machine, faster than real time.

.PHONY: demo test test-fast install sysdeps jsdeps bench gallery serve clean

# Let Python keep bytecode (__pycache__, git-ignored) even where the shell says not to: otherwise
# pytest re-rewrites every test module's asserts on each run (~11 s here) and every server the
# tests start compiles flashhead from source again.
unexport PYTHONDONTWRITEBYTECODE

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests need (a real redis-server, Debian's chromium for the browser test, node/npm).
sysdeps:
	bash scripts/sysdeps.sh

jsdeps: sysdeps
	@if [ -f tests/js/package.json ]; then npm --prefix tests/js ci --no-audit --no-fund --loglevel=error; fi

demo: install
	$(BIN)/flashhead generate --image examples/portrait_girl_512.png \
		--text "$(DEMO_TEXT)" --voice Aria --seed 7 -o out/demo.mp4
	@echo "video written to $(CURDIR)/out/demo.mp4"

test: install sysdeps jsdeps
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

# Everything but the tests marked slow (10-minute sessions, deploy, browser, crash, engine faults,
# soak, long quality renders: every test over ~2 s on 2 cores). It runs in JOBS pytest-xdist
# workers, one test file each at a time (module servers start once; the tests/test_neural_* files
# together, on one worker: see tests/conftest.py), in file order, so the files with servers start
# first: 79-86 s with 2 on an idle 2-core machine, about 135 s serially (`make test-fast JOBS=`).
JOBS ?= 2
test-fast: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow" $(if $(JOBS),-n $(JOBS) --dist loadfile --no-loadscope-reorder) tests

bench: install
	$(BIN)/python bench/render_speed.py 30 300

gallery: install
	$(BIN)/python bench/gallery.py

serve: install
	# loopback only, so open mode is allowed: the playground works without a key on this machine
	$(BIN)/flashhead serve --host 127.0.0.1 --port 8000 --no-auth

clean:
	rm -rf $(VENV) .venv-pipecat out flashhead-data tests/js/node_modules
