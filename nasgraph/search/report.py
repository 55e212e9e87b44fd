"""What a search leaves in its folder: the leaderboard, the best model and the plots.

    runs/<study>/leaderboard.md, leaderboard.csv   every finished trial, best first
    runs/<study>/best/                             graph.json, graph.svg, model.py,
                                                   weights.pt, result.json
    runs/<study>/plots/                            history, pareto, importances (.png, .html)

Test accuracy is measured for the `top_k` trials only; the best trial is then retrained from
scratch `final_seeds` times on train + validation, and `best/result.json` reports the mean
test accuracy of those runs and their spread.
"""

from __future__ import annotations

import csv
import io
import statistics
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from nasgraph.data import Dataset
from nasgraph.files import written_together
from nasgraph.ir import Graph
from nasgraph.search.budget import latency_model
from nasgraph.search.config import SearchConfig
from nasgraph.search.evaluation import Progress, retrain
from nasgraph.search.final import Retrained, retrainings
from nasgraph.search.interrupts import ctrl_c_at_stop_points
from nasgraph.search.runs import StudyFolder
from nasgraph.search.study import quiet_optuna
from nasgraph.train import accuracy
from nasgraph.units import si

COLUMNS = ["rank", "trial", "state", "val_accuracy", "test_accuracy", "macs", "params",
           "memory", "latency_ms", "measured_ms", "width_multiplier", "feasible", "pareto",
           "parameters"]


def _accuracy(t: FrozenTrial) -> float:
    if t.values is not None:
        return t.values[0]
    steps = t.intermediate_values
    return steps[max(steps)] if steps else 0.0


def ranked(study: optuna.Study) -> list[FrozenTrial]:
    """Finished trials: trained ones by validation accuracy (then fewer MACs), then the
    pruned, then the infeasible."""
    trials = [t for t in study.get_trials(deepcopy=False)
              if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and "macs" in t.user_attrs]

    def key(t: FrozenTrial) -> tuple:
        group = (0 if t.state == TrialState.COMPLETE else 1) if t.user_attrs.get("feasible") \
            else 2
        return (group, -_accuracy(t), t.user_attrs.get("macs", 0), t.number)

    return sorted(trials, key=key)


def best_val_accuracy(study: optuna.Study) -> float | None:
    """The best validation accuracy of a complete, feasible trial so far; None before one."""
    accs = [t.values[0] for t in study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
            if t.user_attrs.get("feasible")]
    return max(accs, default=None)


def pareto_numbers(trials: list[FrozenTrial], cost: str = "macs") -> set[int]:
    """Trials no other trial beats on both accuracy and `cost` (a user attribute)."""
    pts = [(t.number, _accuracy(t), t.user_attrs[cost]) for t in trials
           if t.state == TrialState.COMPLETE and t.user_attrs.get("feasible")
           and cost in t.user_attrs]
    return {n for n, a, m in pts
            if not any((a2 >= a and m2 <= m) and (a2 > a or m2 < m) for _, a2, m2 in pts)}


def test_accuracy(folder: StudyFolder, t: FrozenTrial, data: Dataset,
                  device: torch.device) -> float | None:
    """The test accuracy of a trained trial's own weights (cached in its folder)."""
    cache, weights = folder.trial_file(t.number, "test.json"), \
        folder.trial_file(t.number, "weights.pt")
    if cache.is_file():
        return folder.read_json(cache)["test_accuracy"]
    if not weights.is_file():
        return None
    from nasgraph.backends.torch import lower

    model = lower(folder.load_graph(t.number))
    model.load_state_dict(folder.read_weights(weights))
    acc = accuracy(model.to(device), data.test)
    folder.write_json(cache, {"test_accuracy": acc})
    return acc


def leaderboard_rows(cfg: SearchConfig, study: optuna.Study, data: Dataset | None = None,
                     device: torch.device | None = None) -> list[dict[str, Any]]:
    """One row per finished trial, best first; test accuracy for the top `cfg.top_k`
    (measured when `data` is given, else read from the trials' folders)."""
    trials = ranked(study)
    front = pareto_numbers(trials, cfg.second_objective)
    rows = []
    for rank, t in enumerate(trials, start=1):
        u = t.user_attrs
        test = None
        if rank <= cfg.top_k and t.state == TrialState.COMPLETE and u.get("feasible"):
            if data is not None and device is not None:
                test = test_accuracy(cfg.folder, t, data, device)
            elif (cache := cfg.folder.trial_file(t.number, "test.json")).is_file():
                test = cfg.folder.read_json(cache)["test_accuracy"]
        rows.append({
            "rank": rank, "trial": t.number, "state": t.state.name.lower(),
            "val_accuracy": round(_accuracy(t), 4) if u.get("feasible") else None,
            "test_accuracy": round(test, 4) if test is not None else None,
            "macs": u["macs"], "params": u["params"], "memory": u["memory"],
            "latency_ms": u.get("latency_ms"),
            "measured_ms": _measured_ms(cfg, t) if test is not None and cfg.uses_latency
            else None,
            "width_multiplier": u.get("width_multiplier"), "feasible": u.get("feasible"),
            "pareto": t.number in front,
            "parameters": " ".join(f"{k}={v}" for k, v in sorted(t.params.items())),
        })
    return rows


def _measured_ms(cfg: SearchConfig, t: FrozenTrial) -> float | None:
    """The trial's latency measured on the latency target (the best trials only: their
    predicted latency is checked against the machine), cached in its folder."""
    cache = cfg.folder.trial_file(t.number, "latency.json")
    if cache.is_file():
        return cfg.folder.read_json(cache)["measured_ms"]
    graph = cfg.folder.load_graph(t.number)
    measured = round(latency_model(cfg.latency_target).measure(graph), 4)
    cfg.folder.write_json(cache, {"measured_ms": measured, "target": cfg.latency_target})
    return measured


def leaderboard_markdown(cfg: SearchConfig, rows: list[dict[str, Any]]) -> str:
    def cell(key: str, v: Any) -> str:
        if v is None:
            return ""
        if key in ("macs", "params"):
            return si(v)
        if key == "memory":
            return si(v) + "B"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float) and key.endswith("accuracy"):
            return f"{100 * v:.2f}%"
        return str(v)

    head = (f"# {cfg.study_name}\n\nspace `{cfg.space}`, dataset `{cfg.dataset}`, budget "
            f"{cfg.budget.describe()}, {cfg.epochs} epochs per trial\n\n")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(k, r[k]) for k in COLUMNS) + " |" for r in rows]
    return head + "\n".join(lines) + "\n"


def leaderboard_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_report(cfg: SearchConfig, study: optuna.Study, data: Dataset,
                 device: torch.device, final: bool = True,
                 progress: Progress | None = None,
                 pick: int | None = None) -> dict[str, Any] | None:
    """Leaderboard, best model (retrained unless `final` is False) and plots; returns the
    content of best/result.json (None when no trial was trained). The best model is trial
    `pick` when given (a timed search's: `schedule.level_and_fastest`), else the trial of
    the best validation accuracy."""
    rows = leaderboard_rows(cfg, study, data, device)
    cfg.folder.write(cfg.study_dir / "leaderboard.md", leaderboard_markdown(cfg, rows))
    cfg.folder.write(cfg.study_dir / "leaderboard.csv", leaderboard_csv(rows))
    trained = [r for r in rows if r["state"] == "complete" and r["feasible"]]
    row = next((r for r in trained if r["trial"] == pick), trained[0] if trained else None)
    best = None
    if row is not None:
        picked = "the best validation accuracy" if row is trained[0] else (
            f"the fastest to train within one standard error of the best validation accuracy"
            f" (trial {trained[0]['trial']}, {trained[0]['val_accuracy']:.2%})")
        best = write_best(cfg, study, row, data, device, final, progress, picked)
    write_plots(cfg, study)
    return best


def write_best(cfg: SearchConfig, study: optuna.Study, row: dict[str, Any], data: Dataset,
               device: torch.device, final: bool, progress: Progress | None = None,
               picked: str = "the best validation accuracy") -> dict[str, Any]:
    """best/: the trial of `row` (the best, or the one `picked` says why) retrained
    `cfg.final_seeds` times on train + validation and tested. Ctrl-C during the retraining
    keeps the retrainings finished so far (or, before the first, the trial's own weights and
    score) and sets `interrupted` in the result."""
    t = study.trials[row["trial"]]
    runs = cfg.folder
    graph = runs.load_graph(t.number)
    folder = runs.best
    runs.write(folder / "graph.json", graph.to_json())
    result: dict[str, Any] = {
        "trial": t.number, "picked_for": picked, "val_accuracy": row["val_accuracy"],
        "trial_test_accuracy": row["test_accuracy"],
        "macs": row["macs"], "params": row["params"], "memory": row["memory"],
        "width_multiplier": row["width_multiplier"], "sampled_parameters": t.params,
        "space": cfg.space, "dataset": cfg.dataset, "budget": cfg.budget.model_dump(),
        "epochs": cfg.epochs,
    }
    weights_file = runs.trial_file(t.number, "weights.pt")
    if weights_file.is_file():
        weights = runs.read_weights(weights_file)
    else:  # another machine ran the trial
        weights = retrain(cfg, graph, data, t.number, device)
    result["test_accuracy"] = row["test_accuracy"]
    result["model_test_accuracy"] = row["test_accuracy"]
    result["final_training"] = None  # the trial's own weights and score
    seeds: list[Retrained] = []
    if final and cfg.final_seeds > 0:
        try:
            with ctrl_c_at_stop_points():
                for run in retrainings(cfg, graph, data, device, progress):
                    seeds.append(run)
                    if len(seeds) == 1:
                        weights = run.state
                        result["model_test_accuracy"] = run.test_accuracy
        except KeyboardInterrupt:
            result["interrupted"] = True
    if seeds:
        accs = [r.test_accuracy for r in seeds]
        result.update({
            "test_accuracy": statistics.fmean(accs),
            "test_accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "test_accuracy_min": min(accs), "test_accuracy_max": max(accs),
            "test_accuracy_runs": accs, "final_epochs": max(r.epochs for r in seeds),
            "final_epochs_runs": [r.epochs for r in seeds],
            "final_seeds": len(seeds), "final_training": "train + validation splits",
        })
    runs.write_weights(folder / "weights.pt", weights)
    result["graph_svg"] = _render(graph, folder / "graph.svg")
    result["model_py"] = _export(graph, folder / "model.py", weights)
    runs.write_json(folder / "result.json", result)
    return result


def _render(graph: Graph, path: Path) -> str | None:
    """Draw the graph; without graphviz's dot program the search still reports (no SVG)."""
    from nasgraph.drawing import render
    from nasgraph.errors import RenderError

    try:
        render(graph, path)
    except RenderError as e:
        print(f"note: best/{path.name} not drawn: {e}")
        return None
    return path.name


def _export(graph: Graph, path: Path, state_dict: dict) -> str:
    """Plain PyTorch source (`load_model()`) and its .safetensors weights beside it."""
    from nasgraph.backends.torch import export_python

    export_python(graph, path, state_dict=state_dict)
    return path.name


def write_plots(cfg: SearchConfig, study: optuna.Study) -> list[str]:
    """Optimization history, accuracy-MACs Pareto front and parameter importances, as PNG
    (matplotlib) and HTML (plotly). A plot that cannot be drawn yet (too few trials) is
    skipped."""
    import matplotlib

    matplotlib.use("Agg")
    folder = cfg.folder.plots
    target = (lambda t: t.values[0]) if cfg.multi_objective else None
    plots = {
        "history": lambda m: m.plot_optimization_history(study, target=target,
                                                         target_name="val accuracy"),
        "importances": lambda m: m.plot_param_importances(study, target=target,
                                                          target_name="val accuracy"),
    }
    if cfg.multi_objective:
        plots["pareto"] = lambda m: m.plot_pareto_front(
            study, target_names=["val accuracy", {"macs": "MACs", "latency_ms": "latency (ms)"}[
                cfg.second_objective]])
    written = []
    with quiet_optuna():  # "There are no complete trials." is no news in the report
        for name, draw in plots.items():
            written += _draw_both(name, draw, folder)
    if not cfg.multi_objective:
        written += _scatter_front(cfg, study, folder)
    return written


def _draw_both(name: str, draw: Callable, folder: Path) -> list[str]:
    """The plot `draw(module)` as PNG (matplotlib) and HTML (plotly), where it can be drawn."""
    import matplotlib.pyplot as plt
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_mpl

    written = []
    for module, ext in ((vis_mpl, "png"), (vis, "html")):
        try:
            with warnings.catch_warnings():
                # optuna's notes on its estimates (PED-ANOVA's "some regimes have less
                # than 2 trials", experimental features) are not the user's concern...
                warnings.simplefilter("ignore", UserWarning)
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # ...but with too few trials it draws equal importances: no plot then
                warnings.filterwarnings("error", "The number of trials is too small")
                fig = draw(module)
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError, UserWarning):
            continue
        path = folder / f"{name}.{ext}"
        with written_together(path) as (tmp,):
            if ext == "png":
                figure = fig.figure if hasattr(fig, "figure") else fig[0].figure
                figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
                plt.close(figure)
            else:
                fig.write_html(tmp, include_plotlyjs="directory", full_html=True)
        written.append(path.name)
    return written


def _scatter_front(cfg: SearchConfig, study: optuna.Study, folder: Path) -> list[str]:
    """Accuracy against MACs for a single-objective study, its Pareto front marked."""
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    trials = [t for t in ranked(study) if t.state == TrialState.COMPLETE
              and t.user_attrs.get("feasible")]
    if not trials:
        return []
    front = pareto_numbers(trials)
    pts = [(t.user_attrs["macs"], _accuracy(t), t.number in front, t.number) for t in trials]
    fig, ax = plt.subplots(figsize=(6, 4))
    for on_front, color in ((False, "tab:gray"), (True, "tab:red")):
        sel = [p for p in pts if p[2] == on_front]
        if sel:  # an empty series has no legend entry, and matplotlib warns of it
            ax.scatter([p[0] for p in sel], [p[1] for p in sel], c=color,
                       label="Pareto front" if on_front else "trials")
    ax.set_xlabel("MACs")
    ax.set_ylabel("val accuracy")
    ax.set_title(f"{cfg.study_name}: accuracy vs MACs")
    ax.legend()
    with written_together(folder / "pareto.png") as (tmp,):
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    html = go.Figure(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers",
                                text=[f"trial {p[3]}" for p in pts],
                                marker={"color": ["red" if p[2] else "gray" for p in pts]}))
    html.update_layout(xaxis_title="MACs", yaxis_title="val accuracy",
                       title=f"{cfg.study_name}: accuracy vs MACs")
    with written_together(folder / "pareto.html") as (tmp,):
        html.write_html(tmp, include_plotlyjs="directory")
    return ["pareto.png", "pareto.html"]
