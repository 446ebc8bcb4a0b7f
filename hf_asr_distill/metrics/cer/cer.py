"""Character error rate as an `evaluate` module that works offline (shipped with hf_asr_distill).

(substitutions + deletions + insertions) / reference characters over the corpus; empty strings are allowed.
"""

import datasets
import evaluate
import jiwer

_DESCRIPTION = "Corpus-level character error rate via jiwer."


class Cer(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description="predictions: list of str; references: list of str",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        out = jiwer.process_characters(list(references), list(predictions))
        chars = out.hits + out.substitutions + out.deletions
        errors = out.substitutions + out.deletions + out.insertions
        return {"cer": errors / chars if chars else float(errors > 0)}
