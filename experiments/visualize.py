"""Attention pictures: alignment heatmaps, and a CLI that redraws a run's plots.

    python -m experiments.visualize RUN_DIR [--best]

loads the run's saved config and its latest (or best) checkpoint and redraws the plots the
run makes at the end of training into ``RUN_DIR/plots``.
"""

import argparse
import json
import pathlib
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
import numpy as np

__all__ = ["alignment_heatmap", "main"]


def alignment_heatmap(
    weights: np.ndarray,
    source_tokens: Sequence[str],
    target_tokens: Sequence[str],
    path: pathlib.Path,
    title: str = "",
) -> pathlib.Path:
    """Draw ``weights`` ``[T, S]`` as in Bahdanau et al. 2014, Figure 3 (white = 1, black = 0).

    Source tokens label the columns (top), target tokens the rows.
    """
    weights = np.asarray(weights)
    if weights.shape != (len(target_tokens), len(source_tokens)):
        raise ValueError(
            f"weights must be [T, S] = [{len(target_tokens)}, {len(source_tokens)}] for the "
            f"given tokens, got shape {weights.shape}"
        )
    size = (max(4.0, 0.35 * len(source_tokens) + 1.5), max(3.0, 0.35 * len(target_tokens) + 1.5))
    fig, ax = plt.subplots(figsize=size, constrained_layout=True)
    ax.imshow(weights, cmap="gray", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(source_tokens)), source_tokens, rotation=90)
    ax.set_yticks(range(len(target_tokens)), target_tokens)
    ax.xaxis.tick_top()
    if title:
        ax.set_title(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> list[pathlib.Path]:
    # Imported here so that importing the drawing helpers stays light.
    from experiments import run
    from experiments.checkpoints import Checkpoints

    parser = argparse.ArgumentParser(prog="python -m experiments.visualize", description=__doc__)
    parser.add_argument("run_dir", type=pathlib.Path)
    parser.add_argument("--best", action="store_true", help="use the best checkpoint")
    args = parser.parse_args(argv)
    config_path = args.run_dir / "config.json"
    if not config_path.exists():
        raise SystemExit(f"error: {args.run_dir} is not a run directory (no config.json)")
    experiment = json.loads(config_path.read_text())["experiment"]
    task = run.load_experiment(experiment)
    config = task.load_config(config_path)
    setup = task.setup(config, args.run_dir)
    checkpoints = Checkpoints(
        args.run_dir, keep_last=1, best_metric=setup.best_metric, best_mode=setup.best_mode
    )
    step = checkpoints.restore_model(setup.model, best=args.best)
    paths = setup.visualize(setup.model, args.run_dir / "plots")
    for path in paths:
        print(f"plot (step {step}): {path}")
    return paths


if __name__ == "__main__":
    main()
