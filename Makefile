# Quick start (README): `make demo` sets up and generates on the default model;
# `make test` sets up and runs the tests (what CI runs).
.PHONY: setup demo test bench clean-venv

setup:
	tools/setup.sh

demo: setup
	.venv/bin/sdfp-edge generate --chat --max-tokens 96 \
		--prompt "Rewrite this Python function with type hints: def add(a, b): return a + b"

test: setup
	.venv/bin/python -m pytest -q tests

clean-venv:
	rm -rf .venv
