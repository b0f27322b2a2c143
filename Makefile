.PHONY: setup demo test test-slow bench

# Two xdist workers, the 15 slowest tests printed so the time budget stays visible.
# Exit status 5 ("no tests collected", e.g. every test deselected) is not a failure.
PYTEST = .venv/bin/python -m pytest -q -n 2 --durations=15

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/privacy-bridge demo

# Everything except the long scenarios (marked slow); about 7 minutes on a 2-core host.
test: setup
	$(PYTEST) -m "not slow" tests || [ $$? -eq 5 ]

# The long scenarios only: full-length accuracy runs, stress repeats, every example.
test-slow: setup
	$(PYTEST) -m slow tests || [ $$? -eq 5 ]

bench: setup
	.venv/bin/privacy-bridge bench
	.venv/bin/python -m bridge.serving.bench   # the service's loadtest: 1 client, then 8 at once, both backends
