"""Training recipes on 8x8 digits: mean and spread of the test accuracy over seeds, for a
hand-made 2-stage ResNet of the residual space within the 200k-MAC budget (8, 8 and 24
channels: 192k MACs, 8.8k parameters), trained as a search's final retraining is (train +
validation splits, 30 epochs).

    python benchmarks/digits_recipe.py [--seeds 10] [--procs 2]

Not a timing: it is how the default recipe (`nasgraph.train.Recipe`) was chosen.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from concurrent.futures import ProcessPoolExecutor

RECIPES = {
    "adamw lr 4e-3 wd 5e-4": dict(lr=4e-3, weight_decay=5e-4),
    "adamw lr 1e-2 wd 5e-3 (default)": dict(lr=1e-2, weight_decay=5e-3),
    "adamw lr 4e-3 wd 5e-3": dict(lr=4e-3, weight_decay=5e-3),
    "adamw lr 4e-3 wd 2e-2": dict(lr=4e-3, weight_decay=2e-2),
}
ARCHITECTURE = {"block": "basic", "preact": False, "stem.width": 8, "stages": 2,
                "stage1.depth": 1, "stage1.width": 8, "stage2.depth": 1, "stage2.width": 24}
EPOCHS = 30


def one(job: tuple[str, int]) -> tuple[str, float]:
    name, seed = job
    import optuna
    import torch

    from nasgraph.data import load_dataset
    from nasgraph.search.space import Context, load_space
    from nasgraph.train import Recipe, accuracy, concat_splits, train

    torch.set_num_threads(1)
    ds = load_dataset("digits")
    graph = load_space("residual")(optuna.trial.FixedTrial(ARCHITECTURE), Context())
    run = train(graph, ds, Recipe(**RECIPES[name]), epochs=EPOCHS, device="cpu",
                seed=10_000 + seed, train_split=concat_splits(ds.train, ds.val))
    return name, accuracy(run.model, ds.test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--procs", type=int, default=2)
    args = parser.parse_args()
    jobs = list(itertools.product(RECIPES, range(args.seeds)))
    with ProcessPoolExecutor(args.procs) as pool:
        results = list(pool.map(one, jobs))
    print(f"| recipe | test accuracy, mean of {args.seeds} seeds | sd | min | max |")
    print("|---|---:|---:|---:|---:|")
    for name in RECIPES:
        accs = [a for n, a in results if n == name]
        print(f"| {name} | {statistics.fmean(accs):.2%} | {statistics.stdev(accs):.2%} | "
              f"{min(accs):.2%} | {max(accs):.2%} |")


if __name__ == "__main__":
    main()
