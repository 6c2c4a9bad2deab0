"""The routing report of a trained run: which experts serve which modalities and combinations, on the test split.

``routing_report_frames(run_dir)`` returns the statistics as pandas data frames (for your own plots);
``write_report(run_dir)`` writes them as a self-contained HTML page plus PNG figures and CSV files.

- ``frames``: the statistics of a run (``report_frames``, ``routing_report_frames``);
- ``routing``: routing statistics from tallied model outputs and from the per-epoch log (drift);
- ``bank``: Flex-MoE's bank-similarity claim, tested on a trained bank;
- ``figures``: the plots; ``html``: the page.
"""

from multimoe.report.frames import report_frames, routing_report_frames
from multimoe.report.html import render_html, save_report, write_report

__all__ = ["render_html", "report_frames", "routing_report_frames", "save_report", "write_report"]
