"""Topologies: parsing, the fill time T_fill, lags, and validation messages."""

import pytest
from bounded import run_within
from hypothesis import example, given, settings
from hypothesis import strategies as st

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


def test_senders_are_the_edges_from_units_not_the_frame():
    top = parse_topology("skip(2)", 4)  # sources [[0], [1, 0], [2, 1], [3, 2]]
    assert [top.senders(i) for i in range(1, 5)] == [[], [0], [0, 1], [0, 1]]


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


# --- fuzzing: random descriptions either parse to a valid topology or raise ValueError ---

INTS = st.one_of(st.integers(-3, 12), st.integers(), st.just(10**30))
JUNK_EDGE = st.one_of(
    st.tuples(INTS, INTS),
    st.tuples(INTS, INTS, INTS),
    st.lists(st.one_of(INTS, st.none(), st.floats(), st.text(max_size=2)), max_size=4),
    st.text(max_size=3),
    st.none(),
)
JUNK_DESCRIPTION = st.one_of(
    st.lists(JUNK_EDGE, max_size=12),
    st.builds(  # the string forms, with any arguments
        lambda kind, args, space: kind + ("" if args is None else space + str(tuple(args))),
        st.sampled_from(["chain", "skip", "dense", "ring", ""]),
        st.one_of(st.none(), st.lists(INTS, max_size=3)),
        st.sampled_from(["", " "]),
    ),
    st.text(max_size=20),
    st.none(),
    INTS,
)
NUM_UNITS = st.one_of(st.integers(-1, 8), st.sampled_from(["2", None, 2.5, True]))


@st.composite
def near_valid(draw):
    """(edge list, num_units): a random valid topology, then maybe a few edits."""
    n = draw(st.integers(1, 8))
    edges = {}
    for i in range(1, n + 1):
        for j in draw(st.sets(st.integers(0, i - 1), min_size=1, max_size=3)):
            edges[j, i] = draw(st.integers(0, 3))
    for j in range(1, n):  # every unit feeds a later one
        if not any(src == j for src, _ in edges):
            edges[j, draw(st.integers(j + 1, n))] = 0
    edges = [(j, i, d) for (j, i), d in edges.items()]
    for _ in range(draw(st.integers(0, 2))):
        edit = draw(st.sampled_from(["drop", "add", "units", "duplicate", "delay"]))
        if edit == "drop" and edges:
            edges.pop(draw(st.integers(0, len(edges) - 1)))
        elif edit == "add":
            edges.append(tuple(draw(st.integers(-1, n + 1)) for _ in range(2)))
        elif edit == "units":
            n += draw(st.sampled_from([-1, 1]))
        elif edit == "duplicate" and edges:
            edges.append(edges[0])
        elif edit == "delay" and edges:
            edges[-1] = (*edges[-1][:2], -1)
    return draw(st.permutations(edges)), n


CASES = st.one_of(
    near_valid(),
    st.tuples(st.sampled_from(["chain", "skip(2)", " dense( 3 ) ", "skip(3, 1)"]), NUM_UNITS),
    st.tuples(JUNK_DESCRIPTION, NUM_UNITS),
)


@settings(max_examples=400, deadline=2000, derandomize=True, database=None)
@given(case=CASES)
@example(case=("dense(1000000000000000000000)", 3))  # once looped over the window
def test_random_descriptions_parse_to_valid_topologies_or_raise_value_error(case):
    description, num_units = case
    try:
        top = run_within(10.0, lambda: parse_topology(description, num_units), "the parser")
    except ValueError as e:
        assert str(e)  # a message, not a bare error
        return
    assert top.num_units == num_units >= 1 and len(top.sources) == num_units
    pairs = [(e.source, e.receiver) for e in top.edges]
    assert len(set(pairs)) == len(pairs)
    for i, into in enumerate(top.sources, start=1):
        assert into and all(e.receiver == i and 0 <= e.source < i and e.delay >= 0 for e in into)
        assert into[0].source == max(e.source for e in into)  # the primary input is nearest
        assert 0 <= top.newest_lag(i) < top.first_valid_step(i)
    for j in range(1, num_units):
        assert top.receivers(j), f"unit {j} feeds nothing"
    assert 1 <= top.fill_steps <= num_units + sum(e.delay for e in top.edges)
    assert top.describe().startswith(f"Topology(L={num_units}")
    assert parse_topology(list(top.edges), num_units) == top  # its edges describe it again


def test_a_skip_longer_than_the_network_is_refused_not_a_silent_chain():
    with pytest.raises(ValueError, match=r"'skip\(5\)' on 4 units.*silently be a chain.*k <= 3"):
        parse_topology("skip(5)", 4)
    with pytest.raises(ValueError, match=r"k <= 3"):
        parse_topology("skip(4)", 4)
    assert not parse_topology("skip(3)", 4).is_chain
