"""A run's HTML report: ``write_report(run)`` -> ``<run>/report/index.html`` plus its PNG plots.

The page references only PNG files written next to it (no scripts, no network), so the
``report/`` folder can be copied or attached as is.
"""

from contrastkit.report.html import read_eval, write_report
from contrastkit.report.plots import pca_2d

__all__ = ["pca_2d", "read_eval", "write_report"]
