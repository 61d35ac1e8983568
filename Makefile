# Two commands from a fresh clone (each sets up .venv first, idempotently; see scripts/env.sh):
#   make bench   the quick benchmark (python -m fastgan bench --quick)
#   make test    the test suite
.PHONY: bench test env clean-env
bench:
	./scripts/bench.sh
test:
	./scripts/test.sh
env:
	bash -c 'source scripts/env.sh'
clean-env:
	rm -rf .venv
