"""Accuracy: WER/CER through `evaluate` (modules shipped with the package, so they work offline), Whisper's text
normalisers, runaway counts, and `compute_metrics` for the Trainer."""

from __future__ import annotations

import logging
from functools import lru_cache
from importlib import resources
from typing import Any, Callable, Iterable

import evaluate
from transformers import EvalPrediction
from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

from ..families import family_of_processor

logger = logging.getLogger(__name__)

RUNAWAY_FACTOR = 2.0  # a prediction with more than 2x its reference's words (+4) is a runaway, e.g. a repeat loop
RUNAWAY_MARGIN = 4


# ---- accuracy --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def load_metric(name: str, prefer_hub: bool = False) -> evaluate.EvaluationModule:
    """The `wer` or `cer` evaluate module shipped with the package (works offline).

    With `prefer_hub=True` the Hub's module is tried first. The packaged ones are the default because the Hub's
    `wer` calls jiwer APIs removed in jiwer 4 and rejects empty references.
    """
    if prefer_hub:
        try:
            return evaluate.load(name)
        except Exception as err:  # noqa: BLE001 - any Hub failure falls back to the packaged module
            logger.warning("evaluate.load(%r) failed (%s); using the packaged module", name, err)
    path = resources.files("hf_asr_distill") / "metrics" / name
    return evaluate.load(str(path))


def text_normalizer(tokenizer: Any = None, english: bool = True, language: str | None = None) -> Callable[[str], str]:
    """Whisper's English normaliser (spelling map from the tokenizer when it has one) for English, the basic
    multilingual one (case, punctuation, diacritics-safe) otherwise. `language` (a code) overrides `english`."""
    if language is not None:
        english = language.lower() in ("en", "english")
    if english:
        return EnglishTextNormalizer(getattr(tokenizer, "english_spelling_normalizer", None) or {})
    return BasicTextNormalizer()


def count_runaways(predictions: Iterable[str], references: Iterable[str]) -> int:
    """Predictions much longer than their reference (a student repeating itself up to the token cap)."""
    return sum(
        len(p.split()) > RUNAWAY_FACTOR * len(r.split()) + RUNAWAY_MARGIN for p, r in zip(predictions, references)
    )


def _scores(predictions: list[str], references: list[str], norm_p: list[str], norm_r: list[str]) -> dict:
    wer, cer = load_metric("wer"), load_metric("cer")
    detailed = wer.compute(predictions=norm_p, references=norm_r, detailed=True)
    return {
        "wer": detailed["wer"],
        "cer": cer.compute(predictions=norm_p, references=norm_r)["cer"],
        "wer_ortho": wer.compute(predictions=predictions, references=references)["wer"],
        "cer_ortho": cer.compute(predictions=predictions, references=references)["cer"],
        "substitutions": detailed["substitutions"],
        "deletions": detailed["deletions"],
        "insertions": detailed["insertions"],
        "runaway": count_runaways(norm_p, norm_r),
        "utterances": len(predictions),
    }


def asr_scores(predictions: list[str], references: list[str], normalizer: Callable[[str], str] | None = None,
               languages: list[str | None] | None = None, tokenizer: Any = None) -> dict:
    """WER/CER on normalised text (and `_ortho` on the raw text), the S/D/I split and the runaway count.

    With `languages` (one code per row) each row is normalised for its language (English normaliser for English,
    the basic one otherwise) and `per_language` holds the same scores per language.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    if languages is None:
        normalizer = normalizer or text_normalizer(tokenizer)
        return _scores(predictions, references, [normalizer(p) for p in predictions],
                       [normalizer(r) for r in references])
    normalizers = {lang: text_normalizer(tokenizer, language=lang) for lang in set(languages)}
    norm_p = [normalizers[lang](p) for p, lang in zip(predictions, languages)]
    norm_r = [normalizers[lang](r) for r, lang in zip(references, languages)]
    scores = _scores(predictions, references, norm_p, norm_r)
    rows = {lang: [i for i, row_lang in enumerate(languages) if row_lang == lang] for lang in sorted(normalizers)}
    scores["per_language"] = {
        lang: _scores(*([values[i] for i in index] for values in (predictions, references, norm_p, norm_r)))
        for lang, index in rows.items()}
    return scores


def wer_metrics(processor: Any, english: bool = True) -> Callable[[EvalPrediction], dict]:
    """`compute_metrics` for the Trainer: Whisper with `predict_with_generate=True`, CTC by greedy decoding.

    When the labels carry each row's language (multilingual Whisper), rows are normalised for their language and
    `wer_<lang>` / `cer_<lang>` are reported beside the overall WER and CER.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    normalizer = text_normalizer(tokenizer, english)
    family = family_of_processor(tokenizer)
    load_metric("wer"), load_metric("cer")  # fail now, before training, if the metric modules cannot load

    def compute(pred: EvalPrediction) -> dict:
        predictions = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        texts, refs = family.decode_predictions(tokenizer, predictions, pred.label_ids)
        languages = family.languages_of_labels(tokenizer, pred.label_ids)
        scores = asr_scores(texts, refs, normalizer, languages=languages, tokenizer=tokenizer)
        for lang, values in scores.pop("per_language", {}).items():  # Trainer logs flat numbers
            scores[f"wer_{lang}"], scores[f"cer_{lang}"] = values["wer"], values["cer"]
        return scores

    return compute
