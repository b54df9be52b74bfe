"""The report's figures, each drawn only when the sweep holds what it shows, each with the numbers
behind it. Accuracies are drawn in percent of the evaluated slice; intervals are the 95 % Wilson
intervals the trials logged, spreads are the standard deviation over seeds.

One module per kind of figure; `drawing` holds what they share, `trials` which trials and metrics
they show. A new figure is a function `(SweepData) -> list[Drawn]` listed in `figures()`."""

from __future__ import annotations

from collections.abc import Callable

from satune.report.fetch import SweepData
from satune.report.figures.comparison import MAX_VERDICTS, configuration_label, paired_comparison
from satune.report.figures.drawing import Drawn
from satune.report.figures.fraction import fraction_curves
from satune.report.figures.optuna_study import optuna_history, optuna_importances
from satune.report.figures.parameters import objective_vs_parameters
from satune.report.figures.tradeoffs import pareto
from satune.report.figures.training import biamat_gate, learning_curves
from satune.report.figures.transfer import class_transfer, transfer_by_fraction
from satune.report.figures.trials import best_trial, headline, ranked

__all__ = [
    "MAX_VERDICTS",
    "Drawn",
    "best_trial",
    "biamat_gate",
    "class_transfer",
    "configuration_label",
    "figures",
    "fraction_curves",
    "headline",
    "learning_curves",
    "objective_vs_parameters",
    "optuna_history",
    "optuna_importances",
    "paired_comparison",
    "pareto",
    "ranked",
    "transfer_by_fraction",
]


def figures(data: SweepData, echo: Callable[[str], None]) -> list[Drawn]:
    """Every figure the sweep's data supports, in the report's order."""
    drawn = []
    for draw in (
        objective_vs_parameters,
        fraction_curves,
        class_transfer,
        transfer_by_fraction,
        pareto,
        optuna_history,
        optuna_importances,
        biamat_gate,
        learning_curves,
        paired_comparison,
    ):
        echo(f"report: {draw.__name__.replace('_', ' ')}")
        drawn += draw(data)
    return drawn
