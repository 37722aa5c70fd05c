# Quick start (README): `make demo` sets up, then decodes one prompt plainly and with
# --mode auto and prints both speeds; `make test` sets up and runs the tests (what CI runs).
.PHONY: setup demo test bench clean-venv

DEMO_PROMPT = Correct the spelling in this paragraph and write it out again: Our team meets every Monday \
morning to dicsuss the week ahead. Each person shares what they are working on and any problems they \
have. The meeting usualy lasts about twenty minutes.

setup:
	tools/setup.sh

demo: setup
	.venv/bin/sdfp-edge generate --chat --temperature 0 --max-tokens 96 --mode auto --compare-plain \
		--prompt "$(DEMO_PROMPT)"

test: setup
	.venv/bin/python -m pytest -q tests

clean-venv:
	rm -rf .venv
