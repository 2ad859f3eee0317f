"""The explain report: one self-contained HTML page with the cell equations, the plots of `gatedrnn.viz` and a
reading of each computed from `gatedrnn.inspect`'s data."""
from gatedrnn.report.explain import write_explain_report

__all__ = ["write_explain_report"]
