from __future__ import annotations

import pytest

from c2c.alignment.layers import build_layer_map, proportional_map, terminal_map


def test_terminal_last_meets_last_and_clamps():
    assert terminal_map([0, 1, 2, 3], [0, 1]) == {0: 0, 1: 0, 2: 0, 3: 1}
    assert terminal_map([0, 1], [0, 1, 2, 3, 4]) == {0: 3, 1: 4}
    # hybrid receivers: only KV layers, by model index
    assert terminal_map([1, 3], [0, 1, 2]) == {1: 1, 3: 2}


def test_proportional_first_meets_first_last_meets_last():
    m = proportional_map(list(range(28)), list(range(24)))
    assert m[0] == 0 and m[27] == 23
    assert all(b >= a for a, b in zip(list(m.values()), list(m.values())[1:]))
    assert proportional_map([5], [0, 1]) == {5: 1}


def test_explicit_map_is_validated():
    assert build_layer_map({"1": 0}, [0, 1], [0, 1]) == {1: 0}
    with pytest.raises(ValueError, match="receiver layers \\[7\\]"):
        build_layer_map({7: 0}, [0, 1], [0, 1])
    with pytest.raises(ValueError, match="sharer layers \\[0\\]"):
        build_layer_map({1: 0}, [1, 3], [1, 3])
    with pytest.raises(ValueError, match="unknown layer map"):
        build_layer_map("diagonal", [0], [0])
