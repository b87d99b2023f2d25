import numpy as np

from pipeline.split import in_test_split, ref_hashes


def _rows(counts: dict[int, int]) -> tuple[list[str], np.ndarray]:
    refs = [f"src#{label}-{i}" for label, n in counts.items() for i in range(n)]
    labels = np.array([label for label, n in counts.items() for _ in range(n)])
    return refs, labels


def test_split_is_exactly_stratified_over_live_rows():
    counts = {0: 100, 1: 37, 2: 5}
    refs, labels = _rows(counts)
    live = np.ones(len(refs), dtype=bool)
    live[:10] = False  # rejected rows go to no split
    is_test = in_test_split(ref_hashes(refs), labels, live, seed=0, test_fraction=0.2)
    assert not is_test[:10].any()
    for label, n in counts.items():
        alive = n - 10 if label == 0 else n
        assert is_test[labels == label].sum() == round(alive * 0.2)


def test_split_depends_on_seed_and_refs_not_on_order():
    refs, labels = _rows({0: 50, 1: 50})
    live = np.ones(len(refs), dtype=bool)
    base = dict(zip(refs, in_test_split(ref_hashes(refs), labels, live, seed=3, test_fraction=0.3)))
    order = np.random.default_rng(0).permutation(len(refs))
    shuffled = in_test_split(ref_hashes([refs[i] for i in order]), labels[order], live, seed=3, test_fraction=0.3)
    assert dict(zip([refs[i] for i in order], shuffled)) == base
    other = in_test_split(ref_hashes(refs), labels, live, seed=4, test_fraction=0.3)
    assert list(other) != list(base.values()) and other.mean() == 0.3
