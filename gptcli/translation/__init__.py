"""Translation: languages and model families, causal prompts, the line-aligned pipeline, scoring.

`gptcli translate` is a thin command over these modules:

- languages: ISO 639-1 codes and names, and each model family's own codes;
- families: what kind of translator a loaded model is, and a `Plan` for a language pair;
- prompts: instruction and plain prompts for causal models;
- sources: input lines from an argument, a file or streaming stdin (text or JSONL);
- pipeline: batching, long-line splitting and in-order output;
- scoring: BLEU and chrF with sacrebleu.
"""
