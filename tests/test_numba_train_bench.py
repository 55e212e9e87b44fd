"""benchmarks/numba_train: the "spaces" cases are the search's own candidates."""

from benchmarks.numba_train import CASES, SPACES, space_candidates
from nasgraph import analysis


def test_the_spaces_cases_are_three_fitted_candidates_of_each_space():
    assert [name for name, _, _ in CASES["spaces"]] == [
        f"{space} candidate {k}" for space in SPACES for k in (1, 2, 3)]
    for space in SPACES:
        graphs = space_candidates(space)
        assert len(graphs) == 3
        assert len({g.fingerprint() for g in graphs}) == 3
        assert all(0 < analysis.macs(g) <= 1_000_000 for g in graphs), space
        assert all(g.inputs[0].type.shape == (1, 28, 28) for g in graphs), space


def test_the_spaces_cases_are_drawn_again_the_same():
    # Optuna's RandomSampler with the seed: a rerun times the same nets
    first = [g.fingerprint() for g in space_candidates("mobile")]
    space_candidates.cache_clear()
    assert [g.fingerprint() for g in space_candidates("mobile")] == first
    assert [g.fingerprint() for g in space_candidates("mobile", seed=6)] != first
