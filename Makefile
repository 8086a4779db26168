# connpin: `make test` and `make demo` work on a fresh Debian machine as root.
# They install what is missing (system tools with apt, Python deps in a venv) first.

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
SYSPKGS := nftables:nft conntrack:conntrack iproute2:ip procps:sysctl iptables:iptables-legacy
BENCHPKGS := iperf3:iperf3
BENCHSTAMP := $(VENV)/.bench-installed

.PHONY: test unit lint demo sysdeps venv clean bench bench-quick

test: sysdeps $(STAMP)
	$(PY) -m ruff check src tests bench
	$(PY) -m pytest -q -p no:cacheprovider

unit: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

lint: $(STAMP)
	$(PY) -m ruff check src tests bench

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

clean:
	rm -rf $(VENV) build src/*.egg-info
