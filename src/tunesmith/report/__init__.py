"""The report stage: one self-contained HTML page per run, and the index of runs (`tunesmith runs`)."""

from tunesmith.report.html import render_report, write_report

__all__ = ["render_report", "write_report"]
