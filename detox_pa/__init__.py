"""detox_pa: detoxification of LLMs by projection alignment (output-layer fusion with a calibration model).

Modules:
    errors     one-line user errors
    cli        shared CLI runner: logging, error handling, argument parsing
    io         atomic writes, prompt / teacher-data / generation file readers
    assets     the embedded default (packaged models, prompts, word lists) and model aliases
    models     model and tokenizer loading, teacher truncation
"""

__version__ = "0.1.0"
