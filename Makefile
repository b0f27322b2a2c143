.PHONY: setup demo test test-slow bench

# Three xdist workers on a 2-core host: a fair share of the tests wait rather than compute
# (peers paused past a timeout, stalled servers, slow-but-alive kernels, launched processes
# starting), and with two workers such a wait left a core idle (same tree, quiet 2-core host:
# 8 min 11 s with -n 2, 7 min 1 s with -n 3).  --dist worksteal: an idle worker takes a busy
# one's queued tests at the end (8 min 41 s with --dist load, 7 min 48 s with worksteal, same
# tree and host state).  The 15 slowest tests are printed so the time budget stays visible.
# Exit status 5 ("no tests collected", e.g. every test deselected) is not a failure.
PYTEST = .venv/bin/python -m pytest -q -n 3 --dist worksteal --durations=15

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/privacy-bridge demo

# Everything except the long scenarios (marked slow); under 8 minutes on a quiet 2-core host.
test: setup
	$(PYTEST) -m "not slow" tests || [ $$? -eq 5 ]

# The long scenarios only: full-length accuracy runs, stress repeats, every example.
test-slow: setup
	$(PYTEST) -m slow tests || [ $$? -eq 5 ]

bench: setup
	.venv/bin/privacy-bridge bench
	.venv/bin/python -m bridge.serving.bench   # the service's loadtest: 1 client, then 8 at once, both backends
