"""detox_pa: detoxification of LLMs by projection alignment (output-layer fusion with a calibration model).

Modules:
    errors     one-line user errors
    cli        shared CLI runner: logging, error handling, argument parsing
    io         atomic writes, prompt / teacher-data / generation file readers
    assets     the embedded default (packaged models, prompts, word lists) and model aliases
    metrics    metric formulas (EMT, toxicity probability, PPL aggregates, distinct-n, bootstrap)
    teacher    the teacher: first N layers of any causal LM; pretraining in ``pretraining``
    vocab      shared vocabulary across tokenizer families; ``alignment`` trains the matrix A
    fusion     output-layer fusion hooks with a lock-step teacher KV cache
    generation batched, resumable, sharded generation; ``baselines`` word-ban and steering
    bilstm     torch port of the toxic-comment-classifier BiLSTM; ``scorers`` all toxicity scorers
    ppl        batched perplexity of continuations; ``report`` the per-alpha table and plot
"""

__version__ = "0.1.0"
