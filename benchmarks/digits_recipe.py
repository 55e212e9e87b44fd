"""Training recipes on 8x8 digits: mean and spread of test accuracy over seeds, for a
hand-made 2-stage ResNet (~170k MACs). Usage: python benchmarks/digits_recipe.py [N_PROCS]"""

from __future__ import annotations

import itertools
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

RECIPES = {
    "adamw4e-3": dict(optimizer="adamw", lr=4e-3, weight_decay=5e-4),
    "adamw1e-2": dict(optimizer="adamw", lr=1e-2, weight_decay=5e-4),
    "sgd0.1": dict(optimizer="sgd", lr=0.1, weight_decay=5e-4),
    "sgd0.1bs32": dict(optimizer="sgd", lr=0.1, weight_decay=5e-4, batch_size=32),
    "adamw4e-3bs32": dict(optimizer="adamw", lr=4e-3, weight_decay=5e-4, batch_size=32),
}


class Fixed:
    """optuna.trial.FixedTrial's behaviour, so this script runs where optuna is missing."""

    def __init__(self, params):
        self.params = params

    def suggest_categorical(self, name, choices=None, *args, **kwargs):
        return self.params[name]

    suggest_int = suggest_float = suggest_categorical


def graph():
    from nasgraph.search.space import Context, load_space

    p = {"block": "basic", "preact": False, "stem.width": 16, "stages": 2, "stage1.depth": 1,
         "stage1.width": 16, "stage2.depth": 1, "stage2.width": 24}
    return load_space("residual")(Fixed(p), Context())


def one(args):
    name, seed, epochs, final = args
    import torch

    torch.set_num_threads(1)
    from nasgraph import analysis
    from nasgraph.data import load_dataset
    from nasgraph.train import Recipe, accuracy, concat_splits, train

    ds = load_dataset("digits")
    g = graph()
    t = time.perf_counter()
    kw = {"train_split": concat_splits(ds.train, ds.val)} if final else {}
    r = train(g, ds, Recipe(**RECIPES[name]), epochs=epochs, device="cpu", seed=seed, **kw)
    return name, epochs, final, accuracy(r.model, ds.test), r.val_accuracy, \
        time.perf_counter() - t, analysis.macs(g)


if __name__ == "__main__":
    procs = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    jobs = [(n, s, e, f) for n, s, (e, f) in itertools.product(
        RECIPES, range(3), [(10, False), (30, True)])]
    with ProcessPoolExecutor(procs) as ex:
        results = list(ex.map(one, jobs))
    print("macs", results[0][-1])
    for (name, epochs, final), group in itertools.groupby(
            sorted(results, key=lambda r: r[:3]), key=lambda r: r[:3]):
        group = list(group)
        test = [r[3] for r in group]
        print(f"{name:18} epochs={epochs:3} final={final!s:5} test={statistics.fmean(test):.4f}"
              f" sd={statistics.stdev(test):.4f} val={statistics.fmean(r[4] for r in group):.4f}"
              f" s/run={statistics.fmean(r[5] for r in group):.1f}")
