"""The report: a Markdown table and `report.json` of every model's accuracy, cost and size, and a chart of WER
against speed (matplotlib, an optional extra: without it the report says how to get the chart)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..families import family_of
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


def language_table(results: list[ModelResult]) -> str:
    """Markdown table of WER (CER) per language, one row per model; empty when the set has no languages."""
    languages = sorted({lang for r in results for lang in r.scores.get("per_language", {})})
    if not languages:
        return ""
    lines = ["| model | " + " | ".join(f"{lang} WER % (CER %)" for lang in languages) + " |",
             "|---|" + "---:|" * len(languages)]
    for r in results:
        cells = []
        for lang in languages:
            score = r.scores.get("per_language", {}).get(lang)
            cells.append(f"{100 * score['wer']:.2f} ({100 * score['cer']:.2f})" if score else "-")
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_meta(results: list[ModelResult], model: Any, utterances: int, **extra: Any) -> dict:
    """What the report says about the set: utterances, languages, and how long audio was decoded."""
    meta = {"utterances": utterances, **extra}
    languages = sorted({lang for r in results for lang in r.scores.get("per_language", {})})
    if languages:
        meta["languages"] = languages
    long_form = max((r.long_form for r in results), default=0)
    if long_form:
        meta["long_form"] = {"rows": long_form, "method": family_of(model).long_form_method}
    return meta


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
    text = report_table(results)
    if language_table(results):
        text += "\n\nPer language:\n\n" + language_table(results)
    long_form = (meta or {}).get("long_form")
    if long_form:
        text += f"\n\n{long_form['rows']} recordings over the training window were decoded with {long_form['method']}."
    paths["md"].write_text(text + "\n")
    if not plot_report(results, paths["png"]):
        del paths["png"]
    return paths
