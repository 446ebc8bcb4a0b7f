"""The report: a Markdown table and `report.json` of every model's accuracy, cost and size, and a chart of WER
against speed (matplotlib, an optional extra: without it the report says how to get the chart)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from .measure import ModelResult

logger = logging.getLogger(__name__)


def report_table(results: list[ModelResult]) -> str:
    """Markdown table: model, params, size, WER, CER, runaways, latency, RTFx, speed-up."""
    lines = [
        "| model | params (M) | size fp32 (MB) | size fp16 (MB) | WER % | CER % | runaway | latency (ms/utt) "
        "| RTFx | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.params['total'] / 1e6:.1f} | {r.size_bytes['fp32'] / 1e6:.1f} "
            f"| {r.size_bytes['fp16'] / 1e6:.1f} | {100 * r.scores['wer']:.2f} | {100 * r.scores['cer']:.2f} "
            f"| {r.scores['runaway']} | {r.latency_ms:.1f} | {r.rtfx:.1f} | {r.speedup:.2f}x |"
        )
    return "\n".join(lines)


def plot_report(results: list[ModelResult], path: str | Path) -> bool:
    """Accuracy vs speed: WER (%) against RTFx, one labelled point per model. False (and a log line saying how to get
    the chart) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        logger.warning("No chart: matplotlib is not installed (pip install 'hf-asr-distill[plots]').")
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        ax.scatter(r.rtfx, 100 * r.scores["wer"], s=40 + r.params["total"] / 1e6)
        ax.annotate(r.name, (r.rtfx, 100 * r.scores["wer"]), textcoords="offset points", xytext=(6, 4))
    ax.set_xlabel("RTFx (audio seconds per compute second, higher is faster)")
    ax.set_ylabel("WER % (lower is better)")
    ax.set_title("Accuracy vs speed")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(results: list[ModelResult], output_dir: str | Path, meta: dict | None = None) -> dict[str, Path]:
    """Write `report.json`, `report.md` and (with matplotlib) `report.png` into `output_dir`; return the paths
    written."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "report.png"}
    payload = {"meta": meta or {}, "results": [{k: v for k, v in asdict(r).items() if k != "predictions"}
                                               for r in results]}
    paths["json"].write_text(json.dumps(payload, indent=2))
    paths["md"].write_text(report_table(results) + "\n")
    if not plot_report(results, paths["png"]):
        del paths["png"]
    return paths
