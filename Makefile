# pilotlogger — two commands matter: `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
SOURCES := $(wildcard pilotlogger/*.py)

.PHONY: run test bundle venv packages dirac bench faults scale clean

## make run: a demo pilot lifecycle into a temporary spool, replayed to stdout (no broker needed).
run: dist/pilotlog
	@bash examples/demo-pilot.sh

## make bundle: the single-file zipapp a worker node runs.
bundle: dist/pilotlog

dist/pilotlog: $(SOURCES) bin/bundle-main.py Makefile
	@rm -rf build/bundle && mkdir -p build/bundle/pilotlogger dist
	@cp $(SOURCES) build/bundle/pilotlogger/
	@cp bin/bundle-main.py build/bundle/__main__.py  # bytecode cache; zipapp's own -m drops the exit code
	@$(PYTHON) -m zipapp build/bundle -p '/usr/bin/env python3' -c -o dist/pilotlog.tmp
	@chmod 0755 dist/pilotlog.tmp && mv dist/pilotlog.tmp dist/pilotlog
	@echo "built dist/pilotlog: $$(wc -c < dist/pilotlog) bytes"

## make venv: the test tooling (pytest, hypothesis, jsonschema, stomp.py, selenium, build, ruff, mypy).
venv: $(VENV)/.installed

$(VENV)/.installed: tests/requirements.txt
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	@$(VPY) -m pip install -q --disable-pip-version-check -r tests/requirements.txt
	@touch $@

## make packages: the Debian packages the tests use: brokers they start privately (RabbitMQ, ActiveMQ,
## openssl for the test PKI), headless Chromium for the timeline page, what DIRAC's M2Crypto
## builds with (swig, libssl-dev), and a C compiler (also for tests/clockshift.c: one process's clock stepped).
packages:
	@missing=""; \
	command -v swig >/dev/null || missing="$$missing swig"; \
	command -v cc >/dev/null || missing="$$missing gcc"; \
	test -f /usr/include/openssl/ssl.h || missing="$$missing libssl-dev"; \
	test -x /usr/lib/rabbitmq/bin/rabbitmq-server || missing="$$missing rabbitmq-server"; \
	test -f /usr/share/activemq/bin/activemq.jar || missing="$$missing activemq"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v keytool >/dev/null || missing="$$missing default-jre-headless"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	test -x /usr/bin/time || missing="$$missing time"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing for the tests (apt-get)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	    || echo "could not install$$missing: the tests needing them will be skipped (and fail with CI=true)"; \
	fi

## make dirac: DIRAC from PyPI (pinned, --no-deps) in its own venv outside the clone, for tests/test_dirac.py.
## Cached under $(DIRAC_CACHE), keyed by the requirements file's hash: built once, then reused.
DIRAC_REQ := tests/dirac/requirements.txt
DIRAC_CACHE ?= /var/cache/pilotlogger
DIRAC_VENV = $(DIRAC_CACHE)/dirac-$(shell sha256sum $(DIRAC_REQ) | cut -c1-16)
dirac: packages
	@if [ ! -f $(DIRAC_VENV)/.installed ]; then \
	  echo "building the DIRAC venv $(DIRAC_VENV) (first time only)"; \
	  rm -rf $(DIRAC_VENV) && mkdir -p $(DIRAC_CACHE) && $(PYTHON) -m venv $(DIRAC_VENV) && \
	  $(DIRAC_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps -r $(DIRAC_REQ) 2>&1 \
	    | grep -v "is ignored" ; \
	  $(DIRAC_VENV)/bin/python -c "import DIRAC, M2Crypto, tornado, db12" && touch $(DIRAC_VENV)/.installed \
	    || echo "the DIRAC venv did not build: tests/test_dirac.py will be skipped (and fail with CI=true)"; \
	fi

## make test: everything the tests need, then the whole suite (unit, bundle, brokers, DIRAC, browser, version matrix).
test: venv packages dirac dist/pilotlog
	@$(VPY) -m pytest --durations=30 tests

## make bench: throughput vs stomp.py and raw bounds on real brokers (spools made through the emit path, beside
## the file-per-event floor and the TLS share), start-up cost, what run --capture keeps, memory, what the DIRAC
## Pilot's posts cost through pilotlog relay against DIRAC's own handler; updates docs/performance.md.
bench: venv packages dirac dist/pilotlog
	@$(VPY) bench/run.py --write docs/performance.md

## make faults: the fault suite at full counts (>= 200 kill -9 trials each, 60 s load) and the security
## tests (1000 generated requests to serve); updates both tables of docs/reliability.md.
## (make test runs the same suites at reduced counts that fit CI.)
faults: venv packages dist/pilotlog
	@PILOTLOG_FAULTS=full PILOTLOG_FAULTS_REPORT=docs/reliability.md $(VPY) -m pytest tests/faults tests/test_security_*.py \
	  tests/test_static_security.py

## make scale: the scale suite at full size (3-node RabbitMQ cluster trials, a burst of 200 pilots, a day of
## 5 M events through timeline), three times (~15 min); writes the figures (median and range of the runs)
## and the paper model into docs/scale.md.  (make test runs the same suite once at reduced size.)
SCALE_RUNS ?= 3
scale: venv packages dist/pilotlog
	@mkdir -p build && rm -f build/scale-runs.jsonl
	@for run in $$(seq 1 $(SCALE_RUNS)); do \
	  echo "== make scale: run $$run of $(SCALE_RUNS)"; \
	  PILOTLOG_SCALE=full PILOTLOG_SCALE_RUNS=build/scale-runs.jsonl PILOTLOG_SCALE_REPORT=docs/scale.md \
	    PILOTLOG_FAULTS_REPORT=docs/scale.md $(VPY) -m pytest tests/scale || exit 1; \
	done

clean:
	rm -rf build dist $(VENV) .pytest_cache
