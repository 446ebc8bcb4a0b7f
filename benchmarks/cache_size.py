"""Teacher-output cache size per label token: top-k (k = 8, 32) against the full logits.

    python benchmarks/cache_size.py --teacher openai/whisper-tiny.en
"""

from __future__ import annotations

import tempfile

from common import base_parser, corpus, table, teacher_and_data
from hf_asr_distill.cache import cache_size_bytes, cache_teacher


def main() -> None:
    cli = base_parser(__doc__.splitlines()[0]).parse_args()
    teacher, processor, data = teacher_and_data(cli.teacher, corpus(cli.corpus))
    tokens = sum(len(data[i]["labels"]) - 1 for i in range(len(data)))  # the leading start token is not a target
    vocab = teacher.config.vocab_size
    rows = [["full logits, fp32", f"{4 * vocab:,}", "100%"], ["full logits, fp16", f"{2 * vocab:,}", "50%"]]
    for k in (8, 32):
        with tempfile.TemporaryDirectory() as tmp:
            cache_teacher(teacher, processor, data, tmp, k=k, progress=False)
            per_token = cache_size_bytes(tmp) / tokens
        rows.append([f"top-{k} (fp16 log-probs + int32 ids)", f"{per_token:,.0f}", f"{100 * per_token / (4 * vocab):.2f}%"])
    print(f"\n{cli.teacher}: vocabulary {vocab:,}; {len(data)} utterances, {tokens} label tokens\n")
    print(table(["what is stored per label token", "bytes", "of fp32 logits"], rows))


if __name__ == "__main__":
    main()
