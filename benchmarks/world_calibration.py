"""Calibration of the synthetic world with a plain PyTorch loop (no Ray, no vLLM): how many rows, epochs
and optimizer steps the tiny student needs to learn 2-3-step chains, and what it forgets out of domain.

    python benchmarks/world_calibration.py results.jsonl '{"persona": "concise", "N": 1000, "steps": 1875, "seed": 0}'

Each argument after the output file is one condition (keys: persona -- a scripted persona or "local" --,
N rows of verified-correct samples drawn from M=4 samples of a 1,200-question pool, epochs or steps, lr,
seed, replay -- the share of N replaced by the base student's single-step facts --, min_d/max_d -- the
pool's difficulty range --, bs -- batch size --, floor -- the cosine's final share of the peak lr --,
bucket -- the trainer's length-bucketed batches instead of random ones --). The base student is trained
once per call from the first condition's "base" key: {"rows", "epochs", "lr", "min_chains" -- multi-step
min(...) chains added, as student.base_chains --} (default 8,000 single-step facts of both families,
6 epochs, lr 2e-3), or {"path": a save_pretrained base the pipeline built}. The recipe copies the project's (AdamW 0.9/0.98, weight decay
0.01 on matrices, clip 1.0, 5% warmup, cosine to 10%, batch 32, loss on the answer and EOS). Scores are
greedy and temperature-0.5 avg@4 on held-out 1-, 2-, 3-, 4-step arith and 2-3-step max questions. It runs
on a GPU when there is one (a condition of ~1,900 steps took ~90 s with 14 conditions sharing one H200);
on 2 CPU cores expect minutes per condition. docs/ablation.md reports what it found.
"""
import json
import math
import random
import re
import sys
import time

import torch
import torch.nn.functional as F

from ray_distill.synthetic.student import build_model, build_tokenizer
from ray_distill.synthetic.tasks import base_chain_corpus, base_corpus, make_questions, solve_steps, step_text
from ray_distill.synthetic.teachers import write_solution

DEV = "cuda" if torch.cuda.is_available() else "cpu"
torch.set_num_threads(1 if DEV == "cuda" else 2)
TOK = build_tokenizer()
EOS = TOK.eos_token_id
BOX = re.compile(r"\\boxed\{(\d)\}")


def enc(q, sol):
    p = TOK.encode(q + "=", add_special_tokens=False)
    a = TOK.encode(sol, add_special_tokens=False) + [EOS]
    return p + a, [-100] * len(p) + a


def train(model, examples, epochs, lr, bs=32, seed=0, steps=None, floor=0.1, bucket=False):
    g = random.Random(seed)
    n_steps = steps or math.ceil(len(examples) / bs) * epochs
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    warm = max(1, int(0.05 * n_steps))

    def f(s):
        if s < warm:
            return (s + 1) / warm
        t = (s - warm) / max(1, n_steps - warm)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
    model.train()
    step = 0
    while step < n_steps:
        order = list(range(len(examples)))
        g.shuffle(order)
        if bucket:  # the project's length-bucketed batches (training.data.plan_batches), not random ones
            from ray_distill.training.data import plan_batches
            plan = plan_batches([len(x[0]) for x in examples], bs, 1, seed=g.randrange(1 << 30))
        else:
            plan = [order[i:i + bs] for i in range(0, len(order) - bs + 1 if len(order) >= bs else 1, bs)]
        for idx in plan:
            batch = [examples[j] for j in idx]
            L = max(len(x[0]) for x in batch)
            ids = torch.tensor([x[0] + [0] * (L - len(x[0])) for x in batch], device=DEV)
            lab = torch.tensor([x[1] + [-100] * (L - len(x[1])) for x in batch], device=DEV)
            att = (torch.arange(L, device=DEV)[None, :] < torch.tensor([len(x[0]) for x in batch], device=DEV)[:, None]).long()
            logits = model(input_ids=ids, attention_mask=att).logits
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), lab[:, 1:].reshape(-1), ignore_index=-100)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            if step >= n_steps:
                break
    return loss.item()


@torch.no_grad()
def score(model, questions, temperature, k, max_new=48):
    """avg@k: mean correct over k samples (greedy: k=1)."""
    model.eval()
    by_len = {}
    for q in questions:
        by_len.setdefault(len(q["question"]), []).append(q)
    right = total = 0
    for _, qs in by_len.items():
        prompts = [TOK.encode(q["question"] + "=", add_special_tokens=False) for q in qs for _ in range(k)]
        x = torch.tensor(prompts, device=DEV)
        done = torch.zeros(len(prompts), dtype=torch.bool, device=DEV)
        for _ in range(max_new):
            logits = model(input_ids=x).logits[:, -1]
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1)[:, 0]
            nxt = torch.where(done, torch.zeros_like(nxt), nxt)
            done |= nxt == EOS
            x = torch.cat([x, nxt[:, None]], 1)
            if done.all():
                break
        for i, row in enumerate(x.tolist()):
            q = qs[i // k]
            text = TOK.decode(row[len(prompts[i]):], skip_special_tokens=False)
            m = BOX.search(text)
            right += bool(m and m.group(1) == q["answer"])
            total += 1
    return right / total


def evals(model, suites):
    out = {}
    for name, qs in suites.items():
        out[name + "/greedy"] = round(score(model, qs, 0, 1), 3)
        out[name + "/t0.5"] = round(score(model, qs, 0.5, 4), 3)
    return out


def local(q, rng):
    return "<think>" + ";".join(step_text(s) for s in solve_steps(q)) + "</think>\\boxed{" + str(solve_steps(q)[-1].result) + "}"


def main():
    out = sys.argv[1]
    conds = [json.loads(c) for c in sys.argv[2:]]
    t0 = time.time()
    suites = {
        "arith2": make_questions("arith", 150, 2, 2, 101),
        "arith3": make_questions("arith", 150, 3, 3, 105),
        "arith4": make_questions("arith", 150, 4, 4, 106),
        "max2to3": make_questions("max", 100, 2, 3, 102),
        "arith1": make_questions("arith", 200, 1, 1, 107),
    }
    held = {q["question"] for qs in suites.values() for q in qs if q["family"] == "arith" and len(q["question"]) > 3}
    base_key = conds[0].get("base", {"rows": 8000, "epochs": 6})
    torch.manual_seed(0)
    base = build_model("tiny", len(TOK), seed=0).to(DEV)
    if "path" in base_key:  # a base student the pipeline built (its save_pretrained folder)
        from transformers import AutoModelForCausalLM
        base.load_state_dict(AutoModelForCausalLM.from_pretrained(base_key["path"]).state_dict())
    else:
        rows = base_corpus(base_key["rows"], seed=0)
        ex = [enc(r["messages"][0]["content"], r["messages"][1]["content"]) for r in rows]
        chains = base_chain_corpus(base_key.get("min_chains", 0), seed=0)  # as student.base_chains
        ex += [enc(r["messages"][0]["content"], r["messages"][1]["content"]) for r in chains]
        train(base, ex, base_key["epochs"], base_key.get("lr", 2e-3), seed=0)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    with open(out, "a") as f:
        f.write(json.dumps({"cond": "base", "s": round(time.time() - t0), **evals(base, suites)}) + "\n")
    for c in conds:
        t1 = time.time()
        seed = c.get("seed", 0)
        pool = make_questions("arith", c.get("pool", 1200), c.get("min_d", 1), c.get("max_d", 3), 1,
                              exclude=held)
        persona = c.get("persona", "concise")
        samples = []
        for q in pool:
            for i in range(c.get("M", 4)):
                sol = local(q["question"], None) if persona == "local" else write_solution(persona, q["question"], i)
                m = BOX.search(sol)
                if m and m.group(1) == q["answer"] and "</think>" in sol:
                    samples.append((q, sol))
        if c.get("one_per_q"):
            seen, s2 = set(), []
            for q, sol in samples:
                if q["question"] not in seen:
                    seen.add(q["question"])
                    s2.append((q, sol))
            samples = s2
        rng = random.Random(seed)
        rng.shuffle(samples)
        n = c.get("N", 1000)
        r = int(c.get("replay", 0) * n)
        picked = samples[:n - r]
        ex = [enc(q["question"], sol) for q, sol in picked]
        ex += [enc(x["messages"][0]["content"], x["messages"][1]["content"]) for x in base_corpus(r, seed=99)]
        model = build_model("tiny", len(TOK), seed=0).to(DEV)
        model.load_state_dict(base_state)
        torch.manual_seed(seed)
        loss = train(model, ex, c.get("epochs", 30), c.get("lr", 2e-3), bs=c.get("bs", 32), seed=seed,
                     steps=c.get("steps"), floor=c.get("floor", 0.1), bucket=c.get("bucket", False))
        res = {"cond": c, "avail": len(samples), "loss": round(loss, 4), "s": round(time.time() - t1), **evals(model, suites)}
        with open(out, "a") as f:
            f.write(json.dumps(res) + "\n")
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
