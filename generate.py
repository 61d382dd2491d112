"""Step 3: generate continuations with projection-alignment fusion, for a sweep of alpha.

``--method diff`` (the default, here and in run_generation.sh): the target's next-token logits move by
``alpha * W_target((h_expert - h_anti) A)`` over its top-k tokens; ``--method fusion`` (the paper):
the target's final hidden state becomes ``alpha * LayerNorm(h_teacher @ A) + (1 - alpha) * h_target``;
``wordban`` and ``steer`` are the baselines. Alpha is every method's strength; 0 is the target alone.

Copy-paste (the embedded default, after steps 1 and 2)::

    python generate.py --method diff --teacher_model outputs/teacher --anti_teacher_model outputs/anti_teacher \\
        --target_model gemma-3-270m --matrix_A outputs/alignment/mapping_model.pt \\
        --data_path rtp:eval --output_path outputs/generations.json --alphas 0 0.1 0.2 0.3

Writes the paper's nested JSON (``response`` stripped as the paper stores it, the exact text in
``continuation``) and ``<stem>.meta.json``. The field's sampled protocol: ``--do_sample --num_samples 25
--top_p 0.9 --max_new_tokens 20``. Scale-out: ``torchrun --nproc_per_node N generate.py ...``. Rerunning the
same command resumes from its journal. See ``detox_pa/generation.py`` and ``detox_pa/methods.py``.
"""

from __future__ import annotations

from detox_pa import generation
from detox_pa.cli import entry


def parse_args(argv=None) -> generation.GenerateArguments:
    return generation.parse_args(argv, description=__doc__.split("\n\n")[0])


main = generation.run  # the step itself, in the package


if __name__ == "__main__":
    entry(main, parse_args)
