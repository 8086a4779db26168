# connpin: `make test` and `make demo` work on a fresh Debian machine as root.
# They install what is missing (system tools with apt, Python deps in a venv) first.

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
SYSPKGS := nftables:nft conntrack:conntrack iproute2:ip procps:sysctl iptables:iptables-legacy \
           keepalived:keepalived conntrackd:conntrackd
BENCHPKGS := iperf3:iperf3
DEBPKGS := dpkg:dpkg-deb systemd:systemd-analyze
BENCHSTAMP := $(VENV)/.bench-installed
# pytest-xdist workers for `make test`: the kernel tests mostly wait on the network, so 4 fit on
# 2 cores (each lab has its own namespaces); JOBS=0 runs them in one process.
JOBS    ?= 4

.PHONY: test unit lint demo sysdeps venv clean bench bench-quick man completion share wheel deb

test: sysdeps $(STAMP)
	$(PY) -m ruff check src tests bench packaging
	$(PY) -m pytest -q -p no:cacheprovider -n $(JOBS) --dist loadgroup

unit: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

lint: $(STAMP)
	$(PY) -m ruff check src tests bench packaging

# Benchmarks (not part of `make test`): a few minutes, results in bench/results/.
# QUICK=1 (or `make bench-quick`) runs fewer repetitions, as a smoke test.
bench: sysdeps $(BENCHSTAMP)
	@$(MAKE) --no-print-directory sysdeps SYSPKGS="$(BENCHPKGS)"
	$(PY) bench/run.py $(if $(QUICK),--quick)

bench-quick:
	@$(MAKE) --no-print-directory bench QUICK=1

$(BENCHSTAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

demo:
	@if [ "$$(id -u)" != 0 ]; then \
	  echo "make demo: the lab builds network namespaces, which needs root (try: sudo make demo)."; \
	  echo "Without root you can still see what connpin would install:"; \
	  echo "  make venv && $(VENV)/bin/connpin plan -c examples/pppoe-multi.toml"; \
	  exit 1; fi
	@$(MAKE) --no-print-directory sysdeps $(STAMP)
	$(VENV)/bin/connpin lab demo

# Install the system tools that are missing (only as root, only with apt).
sysdeps:
	@missing=""; for p in $(SYSPKGS); do command -v $${p#*:} >/dev/null 2>&1 || \
	  [ -x /usr/sbin/$${p#*:} ] || [ -x /sbin/$${p#*:} ] || missing="$$missing $${p%%:*}"; done; \
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing system packages:$$missing (install them, then rerun)"; exit 1; fi; fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Packaging (docs/packaging.md). Man pages and completion are generated from the parser and
# README's config reference; `share` stages them with the examples and the unit into the package.
PKGSTAMP := $(VENV)/.package-installed

$(PKGSTAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,package]'
	touch $@

man: $(STAMP)
	$(PY) packaging/man.py build/man

completion: $(STAMP)
	$(PY) packaging/completion.py build/completion

share: man completion
	rm -rf src/connpin/share
	mkdir -p src/connpin/share/examples src/connpin/share/systemd
	cp examples/*.toml src/connpin/share/examples/
	cp contrib/systemd/connpin.service src/connpin/share/systemd/
	cp -r build/man build/completion src/connpin/share/

DIST ?= dist
DEBOUT ?= build/deb

wheel: share $(PKGSTAMP)
	rm -rf $(DIST)
	$(PY) -m build -q --wheel --outdir $(DIST) .

deb: wheel
	@$(MAKE) --no-print-directory sysdeps SYSPKGS="$(DEBPKGS)"
	PY=$(PY) sh packaging/deb/build.sh $(DIST) $(DEBOUT)

clean:
	rm -rf $(VENV) build dist src/*.egg-info src/connpin/share
