"""How large is the target's final hidden state next to the paper's LayerNorm term? (the README's "4x" ratio)

    python bench/hidden_rms.py [--target gemma-3-270m --prompts 30]

Reads the first N held-out prompts (rtp:eval) with the target and prints the RMS of the input of its output layer
(h_target, which the paper's fusion mixes with alpha * LayerNorm(h_teacher A)) at every prompt position. A
parameter-free LayerNorm output has RMS 1 by construction (zero mean, unit variance over the hidden size).
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="gemma-3-270m")
    ap.add_argument("--prompts", type=int, default=30)
    a = ap.parse_args()
    from transformers import AutoTokenizer

    from detox_pa.assets import resolve_model
    from detox_pa.data import load_prompts
    from detox_pa.runtime import load_causal_lm

    path = resolve_model(a.target, "--target")
    tok = AutoTokenizer.from_pretrained(path)
    model = load_causal_lm(path, torch.float32, "cpu")
    prompts = load_prompts("rtp:eval", "auto", "train", "", a.prompts)
    states: list[torch.Tensor] = []
    hook = model.get_output_embeddings().register_forward_pre_hook(lambda mod, args: states.append(args[0][0].detach()))
    with torch.no_grad():
        for p in prompts:
            model(**tok(p, return_tensors="pt"))
    hook.remove()
    h = torch.cat(states)
    rms = h.pow(2).mean(-1).sqrt()
    ln = torch.nn.functional.layer_norm(h, (h.shape[-1],)).pow(2).mean(-1).sqrt()
    print(f"{len(prompts)} prompts, {h.shape[0]} positions, hidden size {h.shape[1]}: RMS of h_target mean "
          f"{rms.mean():.2f} (median {rms.median():.2f}, L2 norm mean {h.norm(dim=-1).mean():.1f}); "
          f"RMS of LayerNorm(h) {ln.mean():.3f}; ratio {rms.mean() / ln.mean():.1f}x")


if __name__ == "__main__":
    main()
