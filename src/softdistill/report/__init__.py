"""Results as tables and plots: aggregate run folders over seeds, write markdown, CSV and PNG."""

from softdistill.report.tables import (RecipeResult, aggregate_runs, format_final_markdown, format_markdown,
                                      write_csv)
from softdistill.report.plots import plot_curves, plot_diagnostics

__all__ = ["RecipeResult", "aggregate_runs", "format_markdown", "format_final_markdown", "write_csv", "plot_curves", "plot_diagnostics"]
