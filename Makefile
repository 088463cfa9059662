# The two commands in the README: `make demo` runs the daemon on the local demo stack,
# `make test` runs every test. Both set up what they need on a fresh machine.
VENV ?= .venv
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: demo test test-systemd systemd-prepare lint bootstrap bench clean dist

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	$(VENV)/bin/python -m lkbridge demo

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The whole suite on an idle CPU, then the conversation tests again beside one busy-loop
# process per core (LKB_CPU_LOAD=1), as on a small device whose CPU is busy.
test: bootstrap lint systemd-prepare
	scripts/netns-run $(VENV)/bin/python -m pytest $(PYTEST_ARGS)
	LKB_CPU_LOAD=1 scripts/netns-run $(VENV)/bin/python -m pytest -m conversation $(PYTEST_ARGS)

# The systemd test (tests/e2e/test_systemd_boot.py) boots Debian in systemd-nspawn; its caches
# (rootfs, wheels) are built here, outside the test network namespace. Exit 77 = cannot run on
# this machine (not root, no debootstrap): fine locally, a failure with CI=true.
systemd-prepare: bootstrap
	@scripts/test-systemd --prepare || [ $$? = 77 ]

# Only the systemd test, with its output (docs/deployment.md, "Tested under systemd").
test-systemd: bootstrap
	scripts/test-systemd

# `make bench BENCH_ARGS=--quick` for a short smoke run; docs/benchmarks.md explains the figures.
bench: bootstrap
	@$(VENV)/bin/python -c "import matplotlib, pyinstrument" 2>/dev/null \
		|| $(VENV)/bin/python -m pip install -q --only-binary=livekit -e ".[bench]"
	scripts/netns-run $(VENV)/bin/python -m bench $(BENCH_ARGS)

# The release artifacts: dist/lkbridge-VERSION-py3-none-any.whl and the sdist (no PyPI release
# exists); `sudo scripts/install.sh dist/lkbridge-*.whl` installs the wheel as a service.
dist: bootstrap
	rm -rf dist
	$(VENV)/bin/python -m build --outdir dist .

clean:
	rm -rf $(VENV) .venv-agent test-logs .pytest_cache .mypy_cache .ruff_cache .import_linter_cache build dist
