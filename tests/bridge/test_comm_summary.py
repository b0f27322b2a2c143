"""``print(private.last_stats)``: a table per party (bytes, rounds, by label group), not a defaultdict dump."""

from __future__ import annotations

import re

import numpy as np
import pytest

from bridge.mpc.comm import CommStats
from tests.conftest import SECURE_BACKENDS


def test_groups_add_up_labels_by_their_first_part():
    stats = CommStats()
    stats.add("server0", "dense/matmul", 1024, 1)
    stats.add("server0", "dense_1/relu/compare", 4096, 4)
    stats.add("server0", "dense_1/relu/b2a", 100, 1)
    stats.add("server0", "share:x", 512, 1)
    stats.add("server0", "share:y", 8, 1)
    assert stats.groups("server0") == {"dense_1": (4196, 5), "dense": (1024, 1), "share": (520, 2)}
    text = str(stats)
    assert "defaultdict" not in text
    lines = text.splitlines()
    assert lines[0] == "CommStats: 1 party" and lines[1] == "server0:"
    assert re.search(r"^\s+dense_1\s+4,196\s+5$", text, re.M)
    assert re.search(r"^\s+total\s+5,740\s+8$", text, re.M)
    assert str(CommStats()) == "CommStats: no traffic"


@pytest.mark.parametrize("backend", SECURE_BACKENDS)
def test_print_last_stats_after_predict(backend):
    keras = pytest.importorskip("keras")
    from frontends.keras import privatize

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(3)])
    private = privatize(model, privacy="encrypted_serving", backend=backend)
    private.predict(np.ones((5, 6), np.float32), verbose=0)
    stats = private.last_stats
    text = str(stats)
    for party in private.program.placement.compute_parties:
        block = text.split(f"{party}:\n", 1)[1].split("\n\n", 1)[0]
        total = re.search(r"^\s+total\s+([\d,]+)\s+([\d,]+)$", block, re.M)
        assert total is not None, text
        assert int(total.group(1).replace(",", "")) == stats.total_bytes(party) > 0
        assert int(total.group(2).replace(",", "")) == stats.total_rounds(party) > 0
