"""detox_pa: detoxification of LLMs by projection alignment (output-layer fusion with a calibration model).

One module per step, each owning its arguments and its ``run``; the scripts at the top of the repository
parse and call them. Modules:

    artifacts    every artifact name, key and path (the steps share only files)
    runtime      device / dtype rules, distributed rank and world, model loading, versions, progress
    cli, errors, io   argument parsing (with --config), one-line errors, atomic writes and checked reads
    data         every input format: prompts (through datasets), teacher data, generations, texts to score
    pretraining  step 1 (train_teacher); completion (the exact completion-only mask); teacher (first N layers)
    alignment    step 2 (the matrix A); embeddings (reading embedding matrices); vocab (shared vocabulary)
    generation   step 3 (journal, sharding, fingerprint); methods (the registry); fusion and baselines (hooks)
    toxicity     step 4a; scorers (Detoxify, BiLSTM, profanity-check); bilstm (the BiLSTM port)
    ppl          step 4b; metrics (EMT, toxicity probability, PPL aggregates, distinct-n, bootstrap)
    report       per-run report, scored runs, the alpha rule, the Pareto plot
    assets       the embedded default (packaged models, prompts, word lists); teacher_data (its data builder)
"""

__version__ = "0.1.0"
