"""benchmarks/numba_step_ab: the turns of a pair (who goes first, which way the ratio
points), with stand-in sides in place of the worker processes."""

from benchmarks.numba_step_ab import pair_ratios


class _Fake:
    """A side that takes `seconds` a step and logs its turns and whether it was closed."""

    def __init__(self, name: str, seconds: float, log: list):
        self.name, self.seconds, self.log = name, seconds, log

    def time_step(self, turn: float) -> float:
        self.log.append(self.name)
        return self.seconds

    def close(self) -> None:
        self.log.append(f"close {self.name}")


def test_a_pair_alternates_and_gives_b_over_a():
    log: list = []
    ratios = pair_ratios(lambda: _Fake("A", 2.0, log), lambda: _Fake("B", 1.0, log),
                         rounds=3, turn=0.1, b_first=False)
    assert ratios == [0.5, 0.5, 0.5]  # B takes half A's time a step
    assert log == ["A", "B", "B", "A", "A", "B", "close A", "close B"]


def test_the_next_pair_starts_with_b():
    log: list = []
    pair_ratios(lambda: _Fake("A", 1.0, log), lambda: _Fake("B", 1.0, log), rounds=2,
                turn=0.1, b_first=True)
    assert log[:4] == ["B", "A", "A", "B"]


def test_a_case_that_is_not_a_graph_file_is_one_error_line(tmp_path, monkeypatch, capsys):
    # --case takes a graph's JSON file too: one that is not a graph stops it before any
    # process starts, with exit 2 and the file's name
    import sys

    import pytest

    from benchmarks import numba_step_ab

    bad = tmp_path / "bad.json"
    bad.write_text('{"nodes": []}')
    monkeypatch.setattr(sys, "argv", ["numba_step_ab", "--case", str(bad)])
    with pytest.raises(SystemExit) as stop:
        numba_step_ab.main()
    assert stop.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(bad) in last and "not a nasgraph graph" in last
