import numpy as np
import ray.data

from pipeline.split import assign_splits


def _dataset(counts: dict[int, int]):
    rows = [{"label": label, "source_ref": f"src#{label}-{i}"} for label, n in counts.items() for i in range(n)]
    return ray.data.from_items(rows, override_num_blocks=4)


def _by_ref(dataset):
    return {r["source_ref"]: r["split"] for r in dataset.take_all()}


def test_split_is_exactly_stratified():
    counts = {0: 100, 1: 37, 2: 5}
    rows = assign_splits(_dataset(counts), seed=0, test_fraction=0.2).take_all()
    for label, n in counts.items():
        test = sum(1 for r in rows if r["label"] == label and r["split"] == "test")
        assert test == round(n * 0.2)
    assert len(rows) == sum(counts.values())


def test_split_depends_on_seed_not_on_blocks():
    base = _by_ref(assign_splits(_dataset({0: 50, 1: 50}), seed=3, test_fraction=0.3))
    rebuilt = _dataset({0: 50, 1: 50}).repartition(7)
    assert _by_ref(assign_splits(rebuilt, seed=3, test_fraction=0.3)) == base
    other = _by_ref(assign_splits(_dataset({0: 50, 1: 50}), seed=4, test_fraction=0.3))
    assert other != base
    assert np.mean([v == "test" for v in other.values()]) == 0.3
