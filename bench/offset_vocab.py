"""What a constant offset promotes and demotes over the target's vocabulary (issue 21: why the default's direction
does not beat steering's on the BiLSTM judge).

    python bench/offset_vocab.py [--matrix NAME=MATRIX.pt ...] [--steer outputs/results/steer_vector.pt] [--json OUT]

Each offset is a logit bias over the target's vocabulary: a pair's center ``c`` (stored by step 2 beside A; the
part of the default offset that transfers to unseen prompts) reads ``W_target (c A)``, activation steering's vector
``v`` reads ``W_target v``. Over the word-like tokens (a leading space, then 3+ ASCII letters: what a continuation
is made of), each bias is z-scored; the table gives its correlation with steering's, the mean z of the word-list
words (single-token words of the word-ban list: what step 2's labels mark toxic), of the words the evaluation's
BiLSTM scores >= 0.5 on their own but the word list does not hold (what the judge sees and the labels do not; the
BiLSTM is read here to explain, never to train), and of the other words, and the words it promotes most. The words it demotes most are counted, not printed: they are the word list's.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def word_like(tokenizer, V: int) -> tuple[torch.Tensor, list[str]]:
    ids, words = [], []
    pat = re.compile(r"^ [A-Za-z]{3,}$")
    for i, s in enumerate(tokenizer.convert_ids_to_tokens(list(range(V)))):
        text = (s or "").replace("\u2581", " ")
        if pat.match(text):
            ids.append(i)
            words.append(text.strip())
    return torch.tensor(ids), words


def table_lines(out: dict) -> list[str]:
    """The markdown table of :func:`main`'s rows (also read by bench/results_report.py)."""
    n = out["rows"][0]["demoted_n"] if out["rows"] else 0
    lines = ["| offset (logit bias) | corr. with steering | mean z, word-list words | mean z, BiLSTM-toxic words off the "
             f"list | mean z, other words | most promoted words | of its {n} most demoted, word-list words |",
             "|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        corr = "-" if r["corr_with_steering"] is None else f"{r['corr_with_steering']:.2f}"
        lines.append(f"| {r['offset']} | {corr} | {r['z_word_list']:+.2f} | {r['z_bilstm_off_list']:+.2f} | "
                     f"{r['z_other']:+.3f} | {', '.join(r['promoted'])} | {r['demoted_word_list']} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--matrix", action="append", default=[], metavar="NAME=MATRIX.pt",
                    help="a matrix file holding its pair's center (default: the default run's, outputs/alignment)")
    ap.add_argument("--steer", default=str(REPO / "outputs" / "results" / "steer_vector.pt"))
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--json", default="", help="also write the rows here (bench/results.sh: <res_dir>/offset_vocab.json)")
    a = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from detox_pa.artifacts import load_center, load_matrix, load_steer_vector, matrix_path
    from detox_pa.assets import resolve_model
    from detox_pa.directed import word_list_ids
    from detox_pa.runtime import load_causal_lm
    from detox_pa.scorers import get_scorer

    tpath = resolve_model("gemma-3-270m")
    tok = AutoTokenizer.from_pretrained(tpath)
    W = load_causal_lm(tpath, "float32").get_output_embeddings().weight.detach().float()
    ids, words = word_like(tok, W.shape[0])
    wl = word_list_ids(tok)
    listed = torch.tensor([i in wl for i in ids.tolist()])
    judged = torch.tensor(get_scorer("bilstm").score(words, batch_size=4096) >= 0.5) & ~listed
    rest = ~listed & ~judged
    biases = {}
    if Path(a.steer).is_file():
        biases["activation steering"] = W[ids] @ load_steer_vector(a.steer, W.shape[1]).float()
    specs = a.matrix or [f"default pair's center={matrix_path(REPO / 'outputs' / 'alignment')}"]
    for spec in specs:
        name, _, path = spec.rpartition("=")
        A = load_matrix(path)
        c = load_center(path, A.shape[0], required=True)
        biases[name or path] = W[ids] @ (c.float() @ A.float())
    z = {k: (v - v.mean()) / v.std() for k, v in biases.items()}
    ref = z.get("activation steering")
    rows = []
    for k, v in z.items():
        down = (-v).topk(a.top * 4).indices
        rows.append({"offset": k,
                     "corr_with_steering": None if ref is None else round(float(torch.corrcoef(torch.stack([v, ref]))[0, 1]), 3),
                     "z_word_list": round(float(v[listed].mean()), 3), "z_bilstm_off_list": round(float(v[judged].mean()), 3),
                     "z_other": round(float(v[rest].mean()), 4),
                     "promoted": [words[i] for i in v.topk(a.top).indices.tolist()],
                     "demoted_word_list": int(listed[down].sum()), "demoted_n": a.top * 4})
    out = {"word_like_tokens": len(ids), "word_list_words": int(listed.sum()), "bilstm_off_list_words": int(judged.sum()),
           "rows": rows}
    print(f"{len(ids)} word-like target tokens: {int(listed.sum())} word-list words, {int(judged.sum())} other words "
          "the BiLSTM scores >= 0.5 alone")
    print("\n".join(table_lines(out)))
    if a.json:
        from detox_pa.io import atomic_write_json

        atomic_write_json(Path(a.json), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
