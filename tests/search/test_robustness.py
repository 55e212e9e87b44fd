"""What a search refuses, and how it resumes: bad options and storages in one line, settings
stored with a study, a resumed sampler that draws new candidates, a final phase that reports
its progress and keeps what finished when stopped."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
from typer.testing import CliRunner

from nasgraph.cli import app
from nasgraph.errors import NasgraphError
from nasgraph.search.config import SearchConfig
from nasgraph.search.run import search
from nasgraph.search.study import open_study


def one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, \
        result.stderr
    return result.stderr


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--budget", "1e999", "--budget '1e999': expected a positive amount"),
    ("--budget", "0.0001", "--budget '0.0001': expected a positive amount"),
    ("--final-epochs", "-3", "--final-epochs -3: Input should be greater than 0"),
    ("--final-epochs", "0", "--final-epochs 0: Input should be greater than 0"),
    ("--timeout", "-5", "--timeout -5.0: Input should be greater than 0"),
    ("--study", "../../x", "'../../x' is not a study name"),
    ("--study", ".hidden", "'.hidden' is not a study name"),
    ("--storage", "notaurl", "--storage 'notaurl': cannot open it"),
])
def test_bad_search_options_are_one_line(tmp_path, option, value, message):
    err = one_line_error(["search", "residual", "--runs-dir", str(tmp_path), option, value])
    assert message in err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a study folder


def test_usage_errors_are_one_line_too():
    assert "Invalid value for '--batch'" in one_line_error(["run", "lenet5", "--batch", "0"])
    assert "No such option: --bogus" in one_line_error(["info", "lenet5", "--bogus"])
    assert "No such command 'bogus'" in one_line_error(["bogus"])


def test_study_show_of_a_bad_storage_or_a_corrupt_database(tmp_path):
    assert "cannot open it" in one_line_error(["study", "show", "x", "--storage", "notaurl"])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "study.db").write_bytes(b"not a database, not even close" * 100)
    err = one_line_error(["study", "show", "broken", "--runs-dir", str(tmp_path)])
    assert "not a readable study database" in err


def test_an_unreachable_server_fails_at_once_without_retrying():
    # nothing listens on port 1: the first connection is refused, and not retried for minutes
    err = one_line_error(["study", "show", "x", "--storage",
                          "postgresql://nobody@127.0.0.1:1/none"])
    assert "cannot connect" in err and "retrying" not in err


def test_two_functions_of_one_file_are_two_studies():
    names = {SearchConfig(space=s, dataset="mnist:/data").study_name
             for s in ("my_spaces.py:wide", "my_spaces.py:deep", "my_spaces.py")}
    assert names == {"my_spaces-wide-mnist", "my_spaces-deep-mnist", "my_spaces-mnist"}
    assert SearchConfig(space="my_spaces.py:space").study_name == "my_spaces-digits"


@pytest.mark.parametrize(("change", "message"), [
    ({"epochs": 2}, "--epochs 1, not 2"),
    ({"final_epochs": 5}, "--final-epochs 3, not 5"),
    ({"budget_macs": 300_000}, "--budget 200000, not 300000"),
    ({"dataset": "synthetic"}, "--dataset digits, not synthetic"),
])
def test_a_study_resumes_only_with_its_own_settings(tmp_path, change, message):
    cfg = SearchConfig(space="residual", budget_macs=200_000, epochs=1, study="s",
                       runs_dir=str(tmp_path))
    open_study(cfg)
    open_study(cfg.model_copy(update={"trials": 50, "workers": 2}))  # these may change
    with pytest.raises(NasgraphError, match=message):
        open_study(cfg.model_copy(update=change))


def test_resumed_search_draws_new_candidates_and_reports_its_final_phase(tmp_path, capfd):
    cfg = SearchConfig(space="residual", sampler="random", budget_macs=50_000, trials=1,
                       epochs=1, final_seeds=0, final_epochs=2, runs_dir=str(tmp_path),
                       device="cpu")
    search(cfg)
    phases: list[tuple[str, int, int]] = []
    resumed = cfg.model_copy(update={"trials": 2, "final_seeds": 2})
    result = search(resumed, progress=lambda *p: phases.append(p))
    study = optuna.load_study(study_name=cfg.study_name,
                              storage=f"sqlite:///{tmp_path / cfg.study_name / 'study.db'}")
    first, second = (t.params for t in study.trials[:2])
    assert first != second  # the resumed sampler did not replay trial 0's draws
    assert phases[:1] == [("trial 1", 1, 1)]  # the resumed trial, after its epoch
    assert phases[1:] == [(f"final retraining, seed {k}/2", e, 2) for k in (1, 2)
                          for e in (0, 1, 2)]
    assert result.best["final_seeds"] == 2 and not result.interrupted
    _, err = capfd.readouterr()
    assert "Warning" not in err and "[W " not in err  # optuna's and matplotlib's noise


def test_ctrl_c_in_the_final_phase_keeps_the_finished_retrainings(tmp_path):
    cfg = SearchConfig(space="residual", budget_macs=50_000, trials=1, epochs=1,
                       final_seeds=3, final_epochs=1, runs_dir=str(tmp_path), device="cpu")

    def ctrl_c_in_the_second_retraining(phase: str, epoch: int, epochs: int) -> None:
        if phase.endswith("seed 2/3") and epoch == 1:
            raise KeyboardInterrupt

    result = search(cfg, progress=ctrl_c_in_the_second_retraining)
    assert result.interrupted
    assert result.best["interrupted"] and result.best["final_seeds"] == 1
    assert len(result.best["test_accuracy_runs"]) == 1
    assert (tmp_path / cfg.study_name / "best" / "model.py").is_file()


def test_version_and_python_dash_m():
    r = subprocess.run([sys.executable, "-m", "nasgraph", "--version"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("nasgraph 0."), r.stderr
