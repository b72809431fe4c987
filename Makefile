# Entry points; the scripts do the work (and can be run directly).
.PHONY: bootstrap test run bench lint up down test-deploy chaos

bootstrap:
	scripts/bootstrap.sh

# PYTEST_ARGS, e.g.: make test PYTEST_ARGS='tests/unit -x'
test:
	scripts/test.sh $(PYTEST_ARGS)

# The whole system: Kafka, a mailbox and every service as its own process (Ctrl-C stops all).
run: bootstrap
	.venv/bin/trialroute run

# Every benchmark with modest sizes (~4 minutes), then a summary table; see bench/README.md.
bench:
	scripts/bench.sh

# Faults drawn at random from a seed (printed; TRIALROUTE_CHAOS_SEED replays it) for 10 minutes under
# load, then the fault table; non-zero on any problem (~15 minutes): see docs/reliability.md.
chaos:
	scripts/chaos.sh

# ruff and mypy (strict), as `make test` runs them first.
lint:
	scripts/lint.sh

up:
	deploy/local/up.sh

down:
	deploy/local/down.sh

# Build the image and the compose stack with local stand-ins, run the smoke test against it, stop it
# (~9 minutes once the images are cached, ~25 the first time; a Docker engine, root; not part of
# `make test`): see deploy/README.md.
test-deploy:
	scripts/test-deploy.sh
