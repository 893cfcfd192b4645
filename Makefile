# pilotlogger — two commands matter: `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
SOURCES := $(wildcard pilotlogger/*.py)

.PHONY: run test bundle venv brokers bench faults clean

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

## make venv: the test tooling (pytest, hypothesis, jsonschema, stomp.py).
venv: $(VENV)/.installed

$(VENV)/.installed: tests/requirements.txt
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	@$(VPY) -m pip install -q --disable-pip-version-check -r tests/requirements.txt
	@touch $@

## make brokers: the Debian packages the interop tests start privately (RabbitMQ, ActiveMQ, openssl).
brokers:
	@missing=""; \
	test -x /usr/lib/rabbitmq/bin/rabbitmq-server || missing="$$missing rabbitmq-server"; \
	test -f /usr/share/activemq/bin/activemq.jar || missing="$$missing activemq"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v keytool >/dev/null || missing="$$missing default-jre-headless"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing for the broker tests (apt-get)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=nointeractive apt-get install -y -qq $$missing >/dev/null) \
	    || echo "could not install$$missing: broker tests will be skipped (and fail with CI=true)"; \
	fi

## make test: everything the tests need, then the whole suite (unit, bundle, brokers, version matrix).
test: venv brokers dist/pilotlog
	@$(VPY) -m pytest tests

## make bench: throughput vs stomp.py and raw bounds on real brokers, start-up cost, memory; updates docs/performance.md.
bench: venv brokers dist/pilotlog
	@$(VPY) bench/run.py --write docs/performance.md

## make faults: the fault suite at full counts (>= 200 kill -9 trials each, 60 s load) and the security
## tests (1000 generated requests to serve); updates both tables of docs/reliability.md.
## (make test runs the same suites at reduced counts that fit CI.)
faults: venv brokers dist/pilotlog
	@PILOTLOG_FAULTS=full PILOTLOG_FAULTS_REPORT=docs/reliability.md $(VPY) -m pytest tests/faults tests/test_security_*.py \
	  tests/test_static_security.py

clean:
	rm -rf build dist $(VENV) .pytest_cache
