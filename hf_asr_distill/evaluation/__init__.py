"""Evaluation: accuracy (`metrics`), compute cost and storage (`measure`), and the report with its chart (`report`)."""

from ..families.whisper import max_new_tokens_for
from .measure import (ModelResult, PeakMemory, compare, count_parameters, evaluate_model, size_on_disk,
                      transcribe_batch)
from .metrics import asr_scores, count_runaways, load_metric, text_normalizer, wer_metrics
from .report import extras_text, language_table, parity, plot_report, report_meta, report_table, write_report

__all__ = ["ModelResult", "PeakMemory", "asr_scores", "compare", "count_parameters", "count_runaways",
           "evaluate_model", "extras_text", "language_table", "parity", "load_metric", "report_meta", "max_new_tokens_for", "plot_report", "report_table", "size_on_disk",
           "text_normalizer", "transcribe_batch", "wer_metrics", "write_report"]
