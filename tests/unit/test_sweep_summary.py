"""The one ranking rule every view of a sweep uses (the end table, the best, the final stage's winners,
the verdicts' order, the report's figures, the live view)."""

from satune.sweep.summary import ranked


def test_best_first_by_mode_missing_last_ties_by_the_tie_key_else_in_order():
    items = [("b", 0.5), ("a", 0.5), ("c", None), ("d", 0.9), ("e", 0.1)]
    value = dict(items).get
    names = [k for k, _ in items]
    assert ranked(names, value, "max") == ["d", "b", "a", "e", "c"]  # a tie keeps the given order
    assert ranked(names, value, "max", tie=str) == ["d", "a", "b", "e", "c"]
    assert ranked(names, value, "min", tie=str) == ["e", "a", "b", "d", "c"]  # missing is last either way
    assert ranked([], value, "max") == []
