"""Step 2: train the alignment matrix A (d_teacher x d_target) between a teacher and a target model.

Reads the two tokenizers and only the embedding matrices the objective needs (straight from the
safetensors files), over the tokens both vocabularies share (normalised across tokenizer families).
``--objective logits`` (the default recipe) fits A so the target's output layer reads ``h_teacher @ A`` as
the teacher's reads ``h_teacher``; ``--objective contrastive`` is the paper's. Writes
``<output_dir>/mapping_model.pt`` (``torch.load(p)["mapping"]`` is A, float32) and its JSON sidecar
(models, dims, vocab overlap, retrieval and transmission metrics, arguments).

Copy-paste (the embedded pair, the paper's hyperparameters)::

    python align.py --model1_name smollm2-135m --model2_name gemma-3-270m --output_dir outputs/alignment \\
        --objective contrastive --batch_size 32 --epochs 5 --lr 1e-3 --n_negatives 10 --seed 42

See ``detox_pa/alignment.py``.
"""

from __future__ import annotations

from detox_pa import alignment
from detox_pa.cli import entry


def parse_args(argv=None) -> alignment.AlignArguments:
    return alignment.parse_args(argv, description=__doc__.split("\n\n")[0])


main = alignment.run  # the step itself, in the package


if __name__ == "__main__":
    entry(main, parse_args)
