"""Word error rate as an `evaluate` module that works offline (shipped with hf_asr_distill).

Same definition as the Hub's `wer`: (substitutions + deletions + insertions) / reference words, over the corpus.
Unlike older versions it accepts empty references and predictions (an empty reference counts its prediction's
words as insertions) instead of raising.
"""

import datasets
import evaluate
import jiwer

_DESCRIPTION = "Corpus-level word error rate with its substitution/deletion/insertion split, via jiwer."


class Wer(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description="predictions: list of str; references: list of str",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, detailed=False):
        out = jiwer.process_words(list(references), list(predictions))
        words = out.hits + out.substitutions + out.deletions
        errors = out.substitutions + out.deletions + out.insertions
        wer = errors / words if words else float(errors > 0)
        if not detailed:
            return {"wer": wer}
        return {"wer": wer, "substitutions": out.substitutions, "deletions": out.deletions,
                "insertions": out.insertions, "reference_words": words}
