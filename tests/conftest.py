"""Shared fixtures.  torch is imported before TensorFlow, as Keras' own tests do."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Every subprocess a test starts (user scripts, launched parties) inherits this: a native crash
# (SIGSEGV, SIGABRT) prints every thread's Python stack instead of dying with an empty stderr.
os.environ.setdefault("PYTHONFAULTHANDLER", "1")

import torch  # noqa: E402,F401  - import order matters when both frameworks load

import pytest  # noqa: E402

from bridge.registry import available_backends, get_backend  # noqa: E402

SECURE_BACKENDS = [b for b in ("torch-spdz", "tf-pond") if b in available_backends()]
ALL_BACKENDS = ["plaintext", *SECURE_BACKENDS]


@pytest.fixture(params=SECURE_BACKENDS)
def secure_backend(request):
    return get_backend(request.param)


@pytest.fixture(params=SECURE_BACKENDS)
def kernels(request):
    return get_backend(request.param).make_kernels()
