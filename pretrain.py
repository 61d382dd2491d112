"""Step 1: train the teacher (the first N decoder layers of a causal LM) on prompt -> safe completion pairs.

The loss is on completion tokens only (an exact mask from one tokenisation with offsets). Works for any
Hugging Face causal LM (Llama, Mistral, Gemma-3, Qwen2, GPT-2, ...), in one CPU process, on GPUs with the
`deepspeed` launcher, or with DeepSpeed on CPU; `run_pretrain.sh` picks the launch mode.

Copy-paste (the embedded default, one CPU process, a few minutes on 2 cores):

    python pretrain.py --model_name_or_path smollm2-135m --num_teacher_layers 3 \
        --training_data_path data/teacher_data.tsv --output_dir outputs/teacher

Reads a base model (alias, local folder or hub id) and a WildJailbreak-style TSV (`vanilla`, `adversarial`,
`completion`) or a JSONL file (`prompt`, `completion`). Writes into --output_dir a plain Hugging Face folder,
`checkpoint-*` folders while training, and the sidecar `detox_pa_teacher.json`, written last. Resume with
`--resume_from_checkpoint last` (RESUME=1 in run_pretrain.sh); `--config FILE` reads arguments from JSON/YAML.
See `detox_pa/pretraining.py`.
"""

from __future__ import annotations

from detox_pa import pretraining
from detox_pa.cli import entry


def parse_args(argv=None) -> pretraining.Args:
    return pretraining.parse_args(argv, description=__doc__.split("\n\n")[0])


main = pretraining.train_teacher  # the step itself, in the package


if __name__ == "__main__":
    entry(main, parse_args)
