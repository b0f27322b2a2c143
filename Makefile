.PHONY: setup demo test bench

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/privacy-bridge demo

test: setup
	.venv/bin/python -m pytest -q -n 2 tests

bench: setup
	.venv/bin/privacy-bridge bench
