"""Topologies: parsing, the fill time T_fill, lags, and validation messages."""

import pytest

from sideways_tf.topology import Edge, parse_topology


def test_chain_is_i_minus_one():
    top = parse_topology("chain", 4)
    assert [[e.source for e in into] for into in top.sources] == [[0], [1], [2], [3]]
    assert top.is_chain
    assert top.fill_steps == 4  # worked example: unit 4 sees f1 at step 4


def test_skip_adds_edges_from_i_minus_k():
    top = parse_topology("skip(2)", 4)
    assert [[e.source for e in into] for into in top.sources] == [[0], [1, 0], [2, 1], [3, 2]]
    assert not top.is_chain
    assert top.fill_steps == 4  # the longest path is still the chain
    assert [top.newest_lag(i) for i in range(1, 5)] == [0, 0, 1, 1]


def test_skip_delay_lengthens_fill():
    top = parse_topology("skip(2, 3)", 3)
    assert Edge(0, 2, 3) in top.edges
    # first(2) = max(first(1) + 1, first(0) + 1 + 3) = 4; first(3) = max(5, first(1) + 1 + 3 = 5).
    assert top.first_valid_step(2) == 4
    assert top.fill_steps == 5


def test_dense_window():
    top = parse_topology("dense(3)", 4)
    assert sorted(e.source for e in top.sources[3]) == [1, 2, 3]
    assert sorted(e.source for e in top.sources[1]) == [0, 1]


def test_explicit_edge_list_with_delay():
    top = parse_topology([(0, 1), (1, 2), (0, 2, 2)], 2)
    assert top.sources[1] == (Edge(1, 2, 0), Edge(0, 2, 2))  # primary (nearest) first
    assert top.fill_steps == 3


@pytest.mark.parametrize(
    "description, message",
    [
        ([(0, 1), (2, 1)], "must go to a later unit"),
        ([(0, 1), (1, 1)], "must go to a later unit"),
        ([(0, 1), (1, 3)], "units are numbered 1..2"),
        ([(0, 1)], "Unit 2 has no source"),
        ([(0, 1), (0, 2)], "Unit 1 feeds no later unit"),
        ([(0, 1), (1, 2, -1)], "negative delay"),
        ([(0, 1), (1, 2), (1, 2)], "listed twice"),
        ("ring", "Unknown topology 'ring'"),
        ("skip(1)", "k >= 2"),
        ("skip", "needs an argument"),
    ],
)
def test_bad_descriptions_say_how_to_fix(description, message):
    with pytest.raises(ValueError, match=message):
        parse_topology(description, 2)
