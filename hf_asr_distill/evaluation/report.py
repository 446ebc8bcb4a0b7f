"""The report: a Markdown table and `report.json` of every model's accuracy, cost and size, and a chart of WER
against speed (matplotlib, an optional extra: without it the report says how to get the chart)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .measure import ModelResult, family_for

logger = logging.getLogger(__name__)


def report_table(results: list[ModelResult]) -> str:
    """Markdown table: model, form, params, size on disk, WER, CER, runaways, latency (batch 1 and batched), RTFx,
    speed-up against the teacher in the same form, peak memory above the process's level before decoding (CUDA
    allocator peak on GPU, sampled resident memory on CPU: "<1" where decoding allocated nothing new)."""
    batch = results[0].batch_size if results else 1
    lines = [
        "| model | form | params (M) | size (MB) | WER % | CER % | runaway | latency b=1 (ms/utt) "
        f"| latency b={batch} (ms/utt) | RTFx | speed-up | memory while decoding (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        single = f"{r.latency_b1_ms:.1f}" if r.latency_b1_ms is not None else f"{r.latency_ms:.1f}"
        size = r.size_bytes.get("disk", r.size_bytes.get("fp32", 0))
        memory = f"{r.peak_memory_mb:.0f}" if r.peak_memory_mb >= 1 else "<1"
        lines.append(
            f"| {r.name} | {r.form} | {r.params['total'] / 1e6:.1f} | {size / 1e6:.1f} | {100 * r.scores['wer']:.2f} "
            f"| {100 * r.scores['cer']:.2f} | {r.scores['runaway']} | {single} | {r.latency_ms:.1f} | {r.rtfx:.1f} "
            f"| {r.speedup:.2f}x | {memory} |"
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


def parity(results: list[ModelResult]) -> dict:
    """Each deployed form's transcripts against the same model's PyTorch ones (when both were measured): how many
    are identical, and the WER difference. Results are named "<model> (<form>)"."""
    by_name = {r.name: r for r in results}
    out = {}
    for r in results:
        base = by_name.get(r.name.replace(f"({r.form})", "(pytorch)"))
        if r.form != "pytorch" and base is not None and base.predictions and r.predictions:
            same = sum(a == b for a, b in zip(r.predictions, base.predictions))
            out[r.name] = {"identical": same, "utterances": len(r.predictions),
                           "wer_delta": r.scores["wer"] - base.scores["wer"]}
    return {"parity": out} if out else {}


def report_meta(results: list[ModelResult], model: Any, utterances: int, **extra: Any) -> dict:
    """What the report says about the set: utterances, languages, and how long audio was decoded."""
    meta = {"utterances": utterances, **extra}
    languages = sorted({lang for r in results for lang in r.scores.get("per_language", {})})
    if languages:
        meta["languages"] = languages
    long_form = max((r.long_form for r in results), default=0)
    if long_form:
        meta["long_form"] = {"rows": long_form, "method": family_for(model).long_form_method}
    return meta


def extras_text(meta: dict) -> str:
    """The report's notes on deployed forms' parity and on speculative decoding."""
    text = ""
    if meta.get("parity"):
        text += "\n\nParity with the PyTorch model (greedy transcripts):\n\n| model (form) | identical | WER change |\n" \
                "|---|---:|---:|\n" + "\n".join(f"| {name} | {p['identical']}/{p['utterances']} | "
                                                f"{100 * p['wer_delta']:+.2f} |" for name, p in meta["parity"].items())
    spec = meta.get("speculative")
    if spec:
        text += (f"\n\nSpeculative decoding, the student as the teacher's assistant ({spec['assistant']}): "
                 f"{spec['identical']}/{spec['utterances']} outputs identical to the teacher's greedy ones, "
                 f"{spec['speedup']:.2f}x ({spec['teacher_ms']:.0f} -> {spec['assisted_ms']:.0f} ms per utterance).")
    return text


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

    fig, ax = plt.subplots(figsize=(7, 4.5))
    forms = sorted({r.form for r in results})
    for r in results:  # one colour per deployment form, one point per model in it
        ax.scatter(r.rtfx, 100 * r.scores["wer"], s=40 + r.params["total"] / 1e6, color=f"C{forms.index(r.form)}",
                   label=r.form)
        label = r.name if len(forms) == 1 or r.name.endswith(f"({r.form})") else f"{r.name} ({r.form})"
        ax.annotate(label, (r.rtfx, 100 * r.scores["wer"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    handles, labels = ax.get_legend_handles_labels()
    if len(forms) > 1:
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=8)
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
    text += extras_text(meta or {})
    paths["md"].write_text(text + "\n")
    if not plot_report(results, paths["png"]):
        del paths["png"]
    return paths
