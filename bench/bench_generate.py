"""Generation speed on the embedded default pair, measured side by side in one run.

    python bench/bench_generate.py [--prompts 32] [--rounds 2] [--teacher T --anti_teacher T2 --matrix A.pt]

The models default to the embedded default run's (``outputs/alignment/``: the tuned pair and its A, what
``generate.py`` decodes with); where they are missing, untrained teachers and a random A of the same sizes stand
in (the same cost per row, but not the default run's picks, so not its share of rows that prefix sharing computes).

1. **Profile** (torch.profiler, with labelled ranges): where the seconds of the default method's decode step go
   (``--method diff --top_k 5``, batch 16, 10 new tokens): the target's layers, its 262k-row output layer, the two
   teachers' forwards, the text bridge (re-tokenising for the teachers), the teachers' cache bookkeeping, the top-k
   scoring, recording the unsteered NLL, and the rest (generate()'s loop, Python). The prompt's prefill is shown
   apart, per batch.
2. **The alpha sweep** as generate.py runs it, greedy: with **prefix sharing** (its default since issue 22:
   :func:`detox_pa.generation.decode_sweep`, all alphas of a batch in one ``generate()``, each distinct (prompt,
   prefix) computed once until the alphas' picks part) and the per-alpha path before it (``--no_prefix_sharing``:
   :func:`detox_pa.generation.sweep_batch` batch by batch, every alpha in turn, the prompt computed once per
   batch), both recording the NLL, against plain ``generate()`` over the same sweep (one call per alpha and batch,
   prefill included), for a 1-alpha and diff's default 7-alpha sweep (DEFAULT_SWEEP), interleaved batch by batch. Also
   against the strict floor, plain ``generate()`` with the prompt computed once per batch too, how the sweep grows
   with alphas (by decode work only), and the share of the target's rows that prefix sharing computed (decode steps;
   the output layer's rows too), measured in the same run. For the 1-alpha sweep also the method's **floor** (plain
   ``generate()`` with both teachers stepped on the same text, the fusion's arithmetic skipped, no NLL) and the method
   without recording the NLL: what the teachers cost, what the rest of the method costs above them, and what the NLL
   recording (which spares eval_ppl.py its forward) costs. And the same with the teachers in bfloat16
   (``generate.py --teacher_dtype bfloat16``; the target stays float32): a teacher's decode step is skinny matrix
   products that stream its weights, so half the bytes is most of its cost (on a CPU with bfloat16 units), with
   how many continuations come out equal to the float32 teachers'.
3. **Single alphas** at 20 forced tokens (as before): the paper's fusion, diff top-5, diff top_k 0 (pre-hook
   path), the fusion one prompt at a time; ratios to plain; the FLOP ratio of the diff step; peak RSS (<= 3 GB).

Clock: by default the process's CPU time with one torch thread (``--clock cpu --threads 1``): on a shared machine
whose other jobs take the cores (and a helper's jobs run niced), wall time measures the queue, CPU time the work.
``--clock wall`` measures wall time instead. Each figure is the fastest of ``--rounds`` interleaved rounds. The
profile's parts are torch.profiler ranges (``--trace FILE`` writes the Chrome trace), timed with the same clock.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_SWEEP = [0.0, 4.0, 8.0, 12.0, 18.0, 22.0, 26.0]  # diff's default sweep (Diff.default_alphas)
clock = time.process_time  # set in main(): time.process_time (CPU) or time.perf_counter (wall)


def load_models(a):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from detox_pa.artifacts import load_matrix
    from detox_pa.assets import resolve_model
    from detox_pa.teacher import build_teacher

    tpath = resolve_model("gemma-3-270m")
    tok = AutoTokenizer.from_pretrained(tpath)
    tok.padding_side = "left"
    target = AutoModelForCausalLM.from_pretrained(tpath, dtype=torch.float32).eval()
    teachers, descs, teacher_tok = [], [], None
    for path in (a.teacher, a.anti_teacher):
        if Path(path, "config.json").exists():
            teachers.append(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval())
            teacher_tok = teacher_tok or AutoTokenizer.from_pretrained(path)
            descs.append(path)
        else:
            model, t = build_teacher("smollm2-135m", 3)
            teachers.append(model.eval())
            teacher_tok = teacher_tok or t
            descs.append("smollm2-135m first 3 layers (untrained; same cost)")
    d_t, d_g = teachers[0].config.hidden_size, target.config.hidden_size
    if Path(a.matrix).exists():
        A, adesc = load_matrix(a.matrix), a.matrix
    else:
        A, adesc = torch.randn(d_t, d_g) / d_t ** 0.5, "random (same cost)"
    return tpath, target, tok, teachers, teacher_tok, A, descs, adesc


def diff_method(a, target, tok, teachers, teacher_tok, A):
    """generate.py's Diff method object, its models handed over (the bench loads each model once)."""
    from detox_pa.generation import GenerateArguments
    from detox_pa.methods import get_method

    args = GenerateArguments(method="diff", top_k=5, anti_teacher_model="x", teacher_model="x", alphas=DEFAULT_SWEEP)
    m = get_method("diff")(args)
    m.target, m.tokenizer, m.expert, m.anti, m.teacher_tok, m.A, m.index = target, tok, *teachers, teacher_tok, A, None
    # the default context and promote weights read the pair's center (a zero center where there is none: the same
    # cost); the promote weight's threshold is computed once, as Diff.load does
    from detox_pa.artifacts import load_center
    from detox_pa.fusion import center_threshold
    from detox_pa.methods import DEFAULT_CONTEXT_WEIGHT, DEFAULT_PROMOTE_WEIGHT

    args.context_weight, args.promote_weight = DEFAULT_CONTEXT_WEIGHT, DEFAULT_PROMOTE_WEIGHT
    m.center = load_center(a.matrix, A.shape[0], required=False) if Path(a.matrix).exists() else None
    if m.center is None:
        m.center = torch.zeros(A.shape[0])
    m.tau = center_threshold(m.center, A, target.get_output_embeddings().weight, args.demote_z)
    return m


# ---------------------------------------------------------------------------------------- 1. profile


@contextlib.contextmanager
def labelled(target, teachers, spent: dict):
    """torch.profiler ranges around the parts of a decode step (module hooks and method wrappers), each also timed
    with ``clock`` into ``spent[label]`` (inclusive of nested parts); removed after."""
    from torch.profiler import record_function

    from detox_pa import fusion as F

    handles, saved = [], []

    def enter(label):
        r = record_function(label)
        r.__enter__()
        return label, clock(), r

    def leave(token):
        label, t0, r = token
        spent[label] += clock() - t0
        r.__exit__(None, None, None)

    def around(module, name_of):
        stack = []

        def pre(m, args, kwargs):
            stack.append(enter(name_of(kwargs)))

        def post(m, args, kwargs, out):
            leave(stack.pop())

        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(module.register_forward_hook(post, with_kwargs=True))

    def phase(kwargs):
        c = kwargs.get("past_key_values")
        return "prefill" if c is None or c.get_seq_length() == 0 else "decode"

    around(target.base_model, lambda kw: f"target layers ({phase(kw)})")
    around(target.get_output_embeddings(), lambda kw: "target output layer")  # first forward hook: before any method's
    for t in teachers:
        around(t.base_model, lambda kw: f"teacher forwards ({phase(kw)})")
    for cls, name, label in ((F.TeacherStepper, "teacher_ids", "bridge re-tokenisation"),
                             (F.TeacherStepper, "step", "teacher step"),
                             (F.DiffFuser, "fuse_logits", "top-k scoring"),
                             (F.DiffFuser, "_on_output_layer", "fusion hook"),
                             (F.NLLRecorder, "_on_output", "NLL recording"),
                             (F.NLLRecorder, "_settle", "NLL recording"),
                             (F._InputTracker, "_on_target_forward", "input tracker")):
        orig = getattr(cls, name)
        saved.append((cls, name, orig))

        def wrapped(*args, __orig=orig, __label=label, **kw):
            token = enter(__label)
            try:
                return __orig(*args, **kw)
            finally:
                leave(token)

        setattr(cls, name, functools.wraps(orig)(wrapped))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for cls, name, orig in saved:
            setattr(cls, name, orig)


def profile_decode(method, target, tok, teachers, prompts, gc, post, trace: str = "") -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    from detox_pa.fusion import PromptMemo
    from detox_pa.generation import sweep_batch

    memo = PromptMemo()
    alphas = [3.0]
    tot: dict = defaultdict(float)
    prof = profile(activities=[ProfilerActivity.CPU]) if trace else contextlib.nullcontext()
    with labelled(target, teachers, tot), prof:
        t0 = clock()
        for _ in sweep_batch(method, target, tok, prompts, alphas, lambda a: 1, gc, torch.device("cpu"), memo, post):
            pass
        wall = clock() - t0
    if trace:
        prof.export_chrome_trace(trace)
    steps = gc.max_new_tokens
    # exclusive times: nested ranges are taken out of their parents
    rows = {
        "target layers, prompt (prefill)": tot["target layers (prefill)"],
        "target layers, decode": tot["target layers (decode)"],
        "target output layer (262k rows)": tot["target output layer"],
        "teacher forwards, prompt (2 teachers)": tot["teacher forwards (prefill)"],
        "teacher forwards, decode (2 teachers)": tot["teacher forwards (decode)"],
        "bridge re-tokenisation": tot["bridge re-tokenisation"],
        "teacher cache bookkeeping": tot["teacher step"] - tot["teacher forwards (prefill)"] - tot["teacher forwards (decode)"],
        "top-k scoring (fuse_logits)": tot["top-k scoring"],
        "fusion hook, rest": tot["fusion hook"] - tot["teacher step"] - tot["bridge re-tokenisation"] - tot["top-k scoring"],
        "NLL recording (logsumexp, gather)": tot["NLL recording"],
        "input tracker": tot["input tracker"],
    }
    rows["generate() loop, Python, rest"] = wall - sum(rows.values())
    lines = [f"profile: diff top-5 alpha 3, {len(prompts)} prompts, {steps} new tokens, 1 batch, "
             f"{torch.get_num_threads()} thread(s), {'CPU' if clock is time.process_time else 'wall'} time {wall:.2f} s",
             f"  {'part':40s} {'s/batch':>8s} {'ms/step':>8s} {'share':>6s}"]
    for k, v in rows.items():
        per_step = "" if "prefill" in k or "prompt" in k else f"{1000 * v / steps:8.1f}"
        lines.append(f"  {k:40s} {v:8.3f} {per_step:>8s} {100 * v / wall:5.1f}%")
    return lines


# ------------------------------------------------------------------------------------------ 2. sweep


def main() -> None:
    from detox_pa.artifacts import TUNED_ANTI, TUNED_EXPERT, matrix_path

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--loop_prompts", type=int, default=8, help="prompts for the one-at-a-time loop")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--max_new_tokens", type=int, default=20, help="section 3's forced length")
    ap.add_argument("--sweep_new_tokens", type=int, default=10, help="sections 1-2 (the default run's length)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip_single", action="store_true", help="leave out section 3")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="process CPU time (default) or wall time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (CPU time is the work only with 1)")
    ap.add_argument("--trace", default="", help="write the profile's torch.profiler Chrome trace here")
    ap.add_argument("--teacher", default=str(REPO / "outputs" / "alignment" / TUNED_EXPERT))
    ap.add_argument("--anti_teacher", default=str(REPO / "outputs" / "alignment" / TUNED_ANTI))
    ap.add_argument("--matrix", default=str(matrix_path(REPO / "outputs" / "alignment")))
    a = ap.parse_args()

    from transformers import GenerationConfig

    from detox_pa.assets import rtp_split
    from detox_pa.fusion import DiffConfig, DiffFuser, PromptMemo, RowShare, difference_fusion, fusion
    from detox_pa.generation import batch_seed, decode_batch, generate_batch, make_batches, sweep_batch
    from detox_pa.ppl import judge_postprocess

    global clock
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    tpath, target, tok, teachers, teacher_tok, A, tdescs, adesc = load_models(a)
    teacher, anti = teachers
    d_t, d_g = teacher.config.hidden_size, target.config.hidden_size
    cpu = torch.device("cpu")
    prompts = rtp_split("eval")[: a.prompts]
    lengths = [len(x) for x in tok(prompts)["input_ids"]]
    batches = [[prompts[it.prompt_index] for it in b] for b in make_batches(lengths, 1, a.batch_size)]
    gc10 = GenerationConfig(max_new_tokens=a.sweep_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                            eos_token_id=tok.eos_token_id)
    method = diff_method(a, target, tok, teachers, teacher_tok, A)
    post = judge_postprocess(target)
    print(f"target gemma-3-270m, teachers {tdescs[0]} + {tdescs[1]}, A {adesc}; {torch.get_num_threads()} thread(s), "
          f"{a.clock} time")
    if "same cost" in " ".join(tdescs + [adesc]):
        print("note: stand-in teachers or A: the costs per row hold, the share of rows prefix sharing computes is not "
              "the default run's (its picks part elsewhere)")

    # warm-up (first-call allocations), both paths, then the profile
    for share in (None, RowShare()):
        for _ in sweep_batch(method, target, tok, batches[0], [0.0, 3.0], lambda x: 0, gc10, cpu, PromptMemo(), post,
                             share):
            pass
    print("\n".join(profile_decode(method, target, tok, teachers, batches[0], gc10, post, a.trace)), flush=True)

    # the same method with its teachers in bfloat16 (generate.py --teacher_dtype bfloat16)
    method16 = diff_method(a, target, tok, [copy.deepcopy(t).to(torch.bfloat16) for t in teachers], teacher_tok, A)
    # the same method reading its offset as it is (generate.py --promote_weight 1, the previous default)
    method_w1 = diff_method(a, target, tok, teachers, teacher_tok, A)
    method_w1.args.promote_weight, method_w1.tau = 1.0, None

    def ours(alphas, k, b, share=None, nll=post, m=method):
        per, ids = [], []
        t0 = t = clock()
        for _, _, d, _ in sweep_batch(m, target, tok, b, alphas, lambda x: batch_seed(2025, x, k), gc10, cpu,
                                      PromptMemo(), nll, share):
            per.append(clock() - t)
            ids.append(d.ids)
            t = clock()
        return clock() - t0, per, ids

    def floor(alphas, k, b, m=method):
        """The method's floor: the target and both teachers stepped on the same text, the fusion's arithmetic (the
        top-k, the scores) skipped and no NLL recorded: what plain generate() plus the teachers' forwards costs."""
        saved = DiffFuser.fuse_logits
        DiffFuser.fuse_logits = lambda self, z, h_e, h_a: z.float()
        try:
            return ours(alphas, k, b, nll=None, m=m)[0]
        finally:
            DiffFuser.fuse_logits = saved

    def plain(alphas, k, b, memo=None):
        t0 = clock()
        for x in alphas:
            torch.manual_seed(batch_seed(2025, x, k))
            decode_batch(target, tok, b, gc10, contextlib.nullcontext, cpu, memo=memo)
        return clock() - t0

    one, seven = "1-alpha (3)", f"{len(DEFAULT_SWEEP)}-alpha ({' '.join(f'{a:g}' for a in DEFAULT_SWEEP)})"
    sweeps = {one: [3.0], seven: DEFAULT_SWEEP}
    best: dict[str, float] = defaultdict(lambda: float("inf"))
    first_share = []
    shares = {name: RowShare() for name in sweeps}  # rows computed by prefix sharing (the last round's)
    same = {name: True for name in sweeps}  # the shared sweep's continuations are the per-alpha path's
    rows16 = [0, 0]  # continuations equal with bf16 teachers, of all (1-alpha sweep)
    for r in range(a.rounds):
        tot: dict[str, float] = defaultdict(float)
        for k, b in enumerate(batches):  # interleaved batch by batch, the order alternating
            for name, alphas in sweeps.items():
                got = {}

                def per_alpha(alphas=alphas, b=b, k=k):
                    res, per, got["old"] = ours(alphas, k, b)
                    if len(per) > 1:
                        first_share.append((per[0], sum(per[1:]) / (len(per) - 1)))
                    return res

                def per_alpha16(alphas=alphas, b=b, k=k):  # bf16 teachers; their continuations kept for the count
                    res, _, got["bf16"] = ours(alphas, k, b, m=method16)
                    return res

                def shared(alphas=alphas, b=b, k=k, name=name):
                    share = shares[name] = RowShare() if k == 0 else shares[name]
                    res, _, got["new"] = ours(alphas, k, b, share)
                    return res

                jobs = [("plain", lambda: plain(alphas, k, b)),
                        ("plain, prompt once", lambda: plain(alphas, k, b, PromptMemo())),
                        ("ours, per alpha", per_alpha), ("ours, prefix sharing", shared)]
                if name == one:  # where the 1-alpha overhead goes: the NLL recording, and the teachers' floor
                    jobs += [("ours, per alpha, no NLL", lambda: ours(alphas, k, b, nll=None)[0]),
                             ("floor: plain + the teachers", lambda: floor(alphas, k, b)),
                             ("ours, per alpha, bf16 teachers", per_alpha16),
                             ("ours, prefix sharing, bf16 teachers", lambda: ours(alphas, k, b, RowShare(), m=method16)[0]),
                             ("floor, bf16 teachers", lambda: floor(alphas, k, b, m=method16)),
                             ("ours, per alpha, promote weight 1", lambda: ours(alphas, k, b, m=method_w1)[0])]
                for label, job in (jobs if (k + r) % 2 == 0 else jobs[::-1]):
                    tot[(name, label)] += job()
                same[name] &= got["old"] == got["new"]  # the same continuations both ways
                if "bf16" in got:  # continuations (of the batch's rows) that bf16 teachers leave unchanged
                    rows16[0] += sum(x == y for d0, d1 in zip(got["old"], got["bf16"]) for x, y in zip(d0, d1))
                    rows16[1] += sum(len(d0) for d0 in got["old"])
        for key, v in tot.items():
            best[key] = min(best[key], v)
        print(f"round {r + 1}: " + ", ".join(f"{n} {lab} {v:.1f}s" for (n, lab), v in tot.items()), flush=True)
    n_tok = len(prompts) * a.sweep_new_tokens
    print(f"\nsweep: {len(prompts)} prompts in {len(batches)} batches of {a.batch_size}, {a.sweep_new_tokens} new tokens, "
          f"greedy, diff top-5, NLL recorded (generate.py's loop: with prefix sharing, its default, and per alpha with the "
          f"prompt once per batch, --no_prefix_sharing); fastest of {a.rounds} rounds")
    for name, alphas in sweeps.items():
        p, p1 = best[(name, "plain")], best[(name, "plain, prompt once")]
        o, s = best[(name, "ours, per alpha")], best[(name, "ours, prefix sharing")]
        sh = shares[name]
        print(f"  {name:15s}: plain generate() {p:6.2f} s, plain with the prompt once {p1:6.2f} s, ours per alpha "
              f"{o:6.2f} s, ours with prefix sharing {s:6.2f} s ({len(alphas) * n_tok / s:.0f} tok/s)")
        print(f"  {'':15s}  ratios: prefix sharing / per alpha {s / o:.3f}x, prefix sharing / plain {s / p:.3f}x, "
              f"per alpha / plain {o / p:.3f}x, per alpha / plain-with-prompt-once {o / p1:.3f}x")
        print(f"  {'':15s}  prefix sharing computed {sh.computed} of {sh.rows} target rows at the decode steps "
              f"({100 * sh.computed / max(sh.rows, 1):.1f}%), {sh.head_computed} of {sh.head_rows} output-layer rows "
              f"({100 * sh.head_computed / max(sh.head_rows, 1):.1f}%); continuations identical to the per-alpha path: "
              f"{'yes' if same[name] else 'NO'}")
    p, fl, nn, o = (best[(one, x)] for x in ("plain", "floor: plain + the teachers", "ours, per alpha, no NLL",
                                             "ours, per alpha"))
    print(f"  {one:15s}: the floor (plain generate() + both teachers stepped on the same text, no fusion arithmetic, "
          f"no NLL) {fl:.2f} s = {fl / p:.3f}x plain; ours without recording the NLL {nn:.2f} s = {nn / p:.3f}x plain, "
          f"{nn / fl:.3f}x the floor; recording the NLL (what eval_ppl.py then reads instead of a forward) "
          f"+{o - nn:.2f} s")
    o16, s16, f16 = (best[(one, x)] for x in ("ours, per alpha, bf16 teachers", "ours, prefix sharing, bf16 teachers",
                                              "floor, bf16 teachers"))
    print(f"  {one:15s}: with the teachers in bfloat16 (--teacher_dtype bfloat16): ours per alpha {o16:.2f} s = "
          f"{o16 / p:.3f}x plain, with prefix sharing {s16:.2f} s = {s16 / p:.3f}x, the floor {f16:.2f} s = "
          f"{f16 / p:.3f}x; continuations equal to the float32 teachers' {rows16[0]} of {rows16[1]}")
    pw = best[(one, "ours, per alpha, promote weight 1")]
    print(f"  {one:15s}: with --promote_weight 1 (the previous default: the offset read as it is, no threshold): ours "
          f"per alpha {pw:.2f} s = {pw / p:.3f}x plain; the default's split costs {o / pw:.3f}x that")
    g_o = best[(seven, "ours, per alpha")] - best[(one, "ours, per alpha")]
    g_s = best[(seven, "ours, prefix sharing")] - best[(one, "ours, prefix sharing")]
    g_p = best[(seven, "plain")] - best[(one, "plain")]
    f0 = sum(x for x, _ in first_share) / max(len(first_share), 1)
    f1 = sum(y for _, y in first_share) / max(len(first_share), 1)
    print(f"  growth 1 -> 7 alphas: prefix sharing +{g_s:.2f} s, per alpha +{g_o:.2f} s, plain +{g_p:.2f} s; within the "
          f"per-alpha 7-alpha sweep a batch's first alpha (prompt computed) takes {f0:.2f} s, each later one (prompt "
          f"replayed) {f1:.2f} s", flush=True)

    # ------------------------------------------------------------------------------- 3. single alphas
    if not a.skip_single:
        gc = GenerationConfig(max_new_tokens=a.max_new_tokens, min_new_tokens=a.max_new_tokens, do_sample=False,
                              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)

        def run(alpha: float, batch_size: int, items: list[str], diff_top_k: int | None = None) -> float:
            if alpha == 0:
                factory = contextlib.nullcontext
            elif diff_top_k is None:
                factory = lambda: fusion(target, teacher, A, alpha, tok, teacher_tok)  # noqa: E731
            else:
                cfg = DiffConfig(alpha=alpha, space="hidden", top_k=diff_top_k)
                factory = lambda: difference_fusion(target, teacher, anti, cfg, A, tok, teacher_tok)  # noqa: E731
            t0 = clock()
            for s in range(0, len(items), batch_size):
                generate_batch(target, tok, items[s:s + batch_size], gc, factory, cpu)
            return clock() - t0

        single = {k: float("inf") for k in ("plain", "fused", "diff", "diff_cheap", "loop")}
        for r in range(a.rounds):
            single["plain"] = min(single["plain"], run(0.0, a.batch_size, prompts))
            single["fused"] = min(single["fused"], run(0.3, a.batch_size, prompts))
            single["diff"] = min(single["diff"], run(0.3, a.batch_size, prompts, diff_top_k=5))
            single["diff_cheap"] = min(single["diff_cheap"], run(0.3, a.batch_size, prompts, diff_top_k=0))
            single["loop"] = min(single["loop"], run(0.3, 1, prompts[: a.loop_prompts]))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v:.2f}s" for k, v in single.items()), flush=True)

        def flops(m) -> float:  # forward FLOPs per token ~ 2 x (non-embedding parameters + the output layer)
            emb = m.get_input_embeddings().weight
            return 2.0 * (sum(p.numel() for n, p in m.named_parameters() if p is not emb) + emb.numel())
        f_t, f_e = flops(target), flops(teacher)
        f_teacher_body = f_e - 2.0 * teacher.get_input_embeddings().weight.numel()
        flop_ratio = (f_t + 2 * f_teacher_body + 2.0 * d_t * d_g) / f_t
        per_prompt_batched, per_prompt_loop = single["fused"] / len(prompts), single["loop"] / a.loop_prompts
        print(f"\nsingle alphas: {len(prompts)} prompts, batch {a.batch_size}, {a.max_new_tokens} forced new tokens, greedy")
        print(f"plain generation          : {single['plain']:.2f} s  ({len(prompts) * a.max_new_tokens / single['plain']:.0f} tok/s)")
        print(f"fused alpha=0.3           : {single['fused']:.2f} s")
        print(f"diff alpha=0.3, top-5     : {single['diff']:.2f} s")
        print(f"diff alpha=0.3, top_k 0   : {single['diff_cheap']:.2f} s  (pre-hook path)")
        print(f"ratio fused / plain       : {single['fused'] / single['plain']:.3f}x   (target <= 1.25x)")
        print(f"ratio diff / plain        : {single['diff'] / single['plain']:.3f}x   (target <= 1.3x; FLOP ratio "
              f"{flop_ratio:.3f}x, {single['diff'] / single['plain'] / flop_ratio:.2f}x of it)")
        print(f"ratio diff top_k 0 / plain: {single['diff_cheap'] / single['plain']:.3f}x")
        print(f"ratio loop / batched      : {per_prompt_loop / per_prompt_batched:.2f}x per prompt   (target >= 4x)")
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"peak RSS                  : {rss_gb:.2f} GB   (target <= 3 GB)")


if __name__ == "__main__":
    sys.exit(main())
