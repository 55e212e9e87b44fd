"""benchmarks/numba_accuracy: the margin and its standard error (`_report.welch`), and
the table."""

import math

from benchmarks._report import welch
from benchmarks.numba_accuracy import table


def test_standard_error_is_welchs_by_hand():
    # sample variances 2 and 20/3, of 2 and 4 values
    diff, se = welch([1.0, 3.0], [0.0, 2.0, 4.0, 6.0])
    assert diff == -1.0
    assert math.isclose(se, math.sqrt(2.0 / 2 + (20.0 / 3) / 4))


def test_table_gives_each_seed_and_the_mean():
    text = table({"torch": [(0.98, 7.0), (0.99, 8.0)], "numba": [(0.97, 4.0), (0.99, 5.0)]},
                 [10000, 10001])
    lines = text.splitlines()
    assert lines[0].startswith("| trainer | seed 10000 | seed 10001 |")
    assert lines[2] == "| torch | 98.00% | 99.00% | 98.50% +- 0.71% | 7.5 |"
    assert lines[3] == "| numba | 97.00% | 99.00% | 98.00% +- 1.41% | 4.5 |"
