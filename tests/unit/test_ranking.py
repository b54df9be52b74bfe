import torch

from satune.data import load_data
from satune.methods.sat import class_order, example_order, membership
from satune.ranking import difficulty_scores, ranking_key
from satune.runtime import cache_dir
from satune.specs import parse_trial


def spec(**method):
    return parse_trial(
        {
            "data": {"dataset": "digits", "train_size": 300},
            "threat": {"norm": "linf", "eps": 0.1, "steps": 2},
            "method": {"kind": "sat", **method},
            "train": {"epochs": 2, "batch_size": 64},
            "eval": {"autoattack": {"n": 0}},
        }
    )


def test_orders():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7])
    assert example_order(scores, "entropy_hardest", 0).tolist() == [1, 3, 2, 0]
    assert example_order(scores, "entropy_easiest", 0).tolist() == [0, 2, 3, 1]
    assert sorted(example_order(scores, "random", 0).tolist()) == [0, 1, 2, 3]
    assert torch.equal(example_order(scores, "random", 5), example_order(scores, "random", 5))
    labels = torch.tensor([0, 1, 1, 0])
    assert class_order(scores, labels, 2, "entropy_hardest", 0).tolist() == [1, 0]


def test_entropy_scores_are_computed_once_and_cached():
    s = spec(fraction=0.3, ranking_epochs=2)
    cache = cache_dir(s.runtime)
    data = load_data(s.data, cache, torch.device("cpu"))
    scores = difficulty_scores(s, data, torch.device("cpu"), cache)
    assert scores.shape == (300,) and (scores >= 0).all() and scores.max() <= torch.log(torch.tensor(10.0))
    path = cache / "rankings" / f"{ranking_key(s)}.pt"
    assert path.exists()
    path.write_bytes(b"")  # a cache hit must not recompute: an empty file now fails to load
    try:
        difficulty_scores(s, data, torch.device("cpu"), cache)
        raise AssertionError("expected the cached file to be read")
    except (EOFError, RuntimeError):
        pass
    path.unlink()
    assert torch.equal(difficulty_scores(s, data, torch.device("cpu"), cache), scores)  # deterministic
    assert ranking_key(spec(fraction=0.7, ranking_epochs=2)) == ranking_key(s)  # A's size is not part of it
    assert ranking_key(spec(fraction=0.3, ranking_epochs=3)) != ranking_key(s)


def test_two_image_folders_get_two_rankings(tmp_path):
    def folder(root, amp=False):
        return parse_trial(
            {
                "data": {"dataset": "imagefolder", "root": str(tmp_path / root)},
                "threat": {"norm": "linf", "eps": 0.1},
                "method": {"kind": "sat", "fraction": 0.5},
                "runtime": {"amp": amp},
            }
        )

    assert ranking_key(folder("a")) != ranking_key(folder("b"))  # same settings, other images
    assert ranking_key(folder("a")) == ranking_key(folder("a"))
    assert ranking_key(folder("a", amp=True)) != ranking_key(folder("a"))  # bf16 predictions differ


def a_of(s, data, cache):
    cpu = torch.device("cpu")
    return membership(s.method, data.train.labels, data.classes, lambda: difficulty_scores(s, data, cpu, cache))


def test_membership_sizes():
    cpu = torch.device("cpu")
    for method, expected in (
        ({"fraction": 0.3, "ranking": "random"}, 90),
        ({"fraction": 0.5, "ranking": "random"}, 150),
    ):
        s = spec(**method)
        data = load_data(s.data, cache_dir(s.runtime), cpu)
        in_a, classes = a_of(s, data, cache_dir(s.runtime))
        assert int(in_a.sum()) == expected and classes is None
    s = spec(split="class", classes=[2, 5])
    data = load_data(s.data, cache_dir(s.runtime), cpu)
    in_a, classes = a_of(s, data, cache_dir(s.runtime))
    assert classes == [2, 5] and torch.equal(in_a, torch.isin(data.train.labels, torch.tensor([2, 5])))
    s = spec(split="class", fraction=0.2, ranking="entropy_hardest", ranking_epochs=2)
    in_a, classes = a_of(s, data, cache_dir(s.runtime))
    assert len(classes) == 2


def test_a_random_ranking_needs_no_scores():
    s = spec(fraction=0.3, ranking="random")
    data = load_data(s.data, cache_dir(s.runtime), torch.device("cpu"))

    def never():
        raise AssertionError("a random ranking must not compute difficulty scores")

    assert int(membership(s.method, data.train.labels, data.classes, never)[0].sum()) == 90


def test_hardest_examples_are_the_high_entropy_ones():
    s = spec(fraction=0.2, ranking="entropy_hardest", ranking_epochs=2)
    cpu = torch.device("cpu")
    cache = cache_dir(s.runtime)
    data = load_data(s.data, cache, cpu)
    scores = difficulty_scores(s, data, cpu, cache)
    in_a, _ = a_of(s, data, cache)
    assert scores[in_a].min() >= scores[~in_a].max()
