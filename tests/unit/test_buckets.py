"""Length buckets (handlers/buckets.py): the split of a padded batch into runs of similar length."""
from __future__ import annotations

import itertools

from buckets import length_groups, padding_waste
from hypothesis import given
from hypothesis import strategies as st


def _cost(lengths: list[int], groups: list[list[int]], overhead: float) -> float:
    return sum(overhead + len(g) * max(lengths[i] for i in g) for g in groups)


def test_equal_lengths_stay_one_run_and_a_long_outlier_gets_its_own() -> None:
    assert length_groups([10] * 8) == [list(range(8))]
    groups = length_groups([12, 11, 200, 10, 12, 11, 10, 12], overhead=8)
    assert [2] in groups and len(groups) == 2
    assert padding_waste([12, 11, 200, 10, 12, 11, 10, 12], groups) < 0.1


@given(st.lists(st.integers(1, 256), min_size=1, max_size=7), st.integers(0, 40))
def test_the_split_is_optimal_and_covers_every_item_once(lengths: list[int], overhead: int) -> None:
    groups = length_groups(lengths, overhead=overhead)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    # Brute force over contiguous splits of the sorted order: none is cheaper.
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = min(_cost(lengths, [order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)))], overhead)
               for r in range(len(order)) for cuts in itertools.combinations(range(1, len(order)), r))
    assert _cost(lengths, groups, overhead) == best


def test_rows_weigh_an_item_holding_several_sequences() -> None:
    # One request of 16 texts padded to 30 next to one short sentence: separate runs pay off.
    groups = length_groups([30, 8], rows=[16, 1], overhead=8)
    assert sorted(groups) == [[0], [1]]
    assert padding_waste([30, 8], [[0, 1]], rows=[16, 1]) > padding_waste([30, 8], groups, rows=[16, 1]) == 0
