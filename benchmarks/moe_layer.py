"""The MoE layer against its speed limit: forward + backward of one top-k MoE feed-forward, float32.

Shape letters: the legend in multimoe/__init__.py (T tokens, D width, H expert hidden width, E experts, K experts per
token).

The limit is a dense FFN doing the same FLOPs with no dispatch: the faster, in the same run, of (a) T*K rows through
one D->H->D MLP and (b) T rows through one D->K*H->D MLP. Every method is timed side by side in one process,
interleaved in a random order each round after warm-up, and reported as a median; "fraction of limit" is limit
time / method time.
Methods: the engine (``multimoe.moe.expert_ffn``: padded batched products), the same dispatch with its products run
by ``torch._grouped_mm`` or a per-expert loop (reference_paths.py), and two references written here: the eager
per-expert loop common in public code (``torch.where`` per expert, the stacked weight indexed per expert,
``index_add``) and sorted contiguous slices with a loop over ``W.unbind(0)``.

Peak memory: the largest amount of memory held at once during one forward + backward above what was held before
it (inputs and parameters excluded, their gradients included), from the profiler's allocation events on CPU and
from ``max_memory_allocated`` on CUDA; "peak_mem_over_limit" divides the engine's by the smaller of the two
limits'. An MoE has E times the parameters of the limit's FFN by design, so its parameter gradients alone can
exceed the limit's whole peak (many-experts: 67 MB of gradients against a 53 MB peak);
"peak_mem_over_limit_same_grads" therefore also divides by the limit's peak plus the difference in
parameter-gradient bytes, which isolates the memory the dispatch itself costs.

    python benchmarks/moe_layer.py                       # the five cases, 2 threads
    python benchmarks/moe_layer.py --shape 32,2,256,1024,2048 --shape 16,4,128,256,6144,skewed
    python benchmarks/moe_layer.py --only flexmoe-batch --shape 16,4,128,256,512,balanced   # routing cost
    python benchmarks/moe_layer.py --device cuda

Extra shapes route randomly (top-k of Gaussian scores, as the named cases), ``skewed`` (every token's top-1 is
expert 0) or ``balanced`` (every expert gets exactly T*K/E rows: the layer without routing imbalance).

The last line printed is one JSON object: {"cases": [{"name", "E", "k", "D", "H", "T", "path",
"fraction_of_limit", "speedup_vs_eager_loop", "speedup_vs_sorted", "peak_mem_over_limit", ...}, ...]}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from reference_paths import PATHS, expert_ffn_path, grouped_supported

from multimoe.dispatch import plan_dispatch
from multimoe.moe import expert_ffn
from multimoe.process import retain_freed_memory


@dataclass
class Case:
    name: str
    E: int
    k: int
    D: int
    H: int
    T: int
    routing: str = "random"  # random top-k | skewed (every top-1 is expert 0) | balanced (exactly T*k/E each)


CASES = [
    Case("flexmoe-batch", 16, 4, 128, 256, 512),  # batch 8 x 4 modalities x 16 tokens, one call
    Case("flexmoe-large-batch", 16, 4, 128, 256, 6144),
    Case("wide", 8, 2, 512, 2048, 4096),
    Case("many-experts", 64, 2, 256, 512, 4096),
    Case("skewed", 16, 4, 128, 256, 6144, routing="skewed"),  # every token's top-1 is expert 0
]


# ---------------------------------------------------------------------------------------------------------------
# The references


def eager_loop(x_TD, ids_TK, weights_TK, w1_EDH, b1_EH, w2_EHD, b2_ED):
    """The per-expert loop common in public code (torch.where per expert, W[e], index_add)."""
    out_TD = torch.zeros_like(x_TD)
    for e in range(w1_EDH.shape[0]):
        token_N, slot_N = torch.where(ids_TK == e)
        if token_N.numel() == 0:
            continue
        y_ND = F.gelu(x_TD[token_N] @ w1_EDH[e] + b1_EH[e]) @ w2_EHD[e] + b2_ED[e]
        out_TD = out_TD.index_add(0, token_N, y_ND * weights_TK[token_N, slot_N, None])
    return out_TD


def sorted_slices(x_TD, ids_TK, weights_TK, w1_EDH, b1_EH, w2_EHD, b2_ED):
    """Sorted contiguous slices, one matmul per expert over W.unbind(0), index_add combine (autograd throughout)."""
    K = ids_TK.shape[1]
    flat_R = ids_TK.reshape(-1)
    order_R = torch.argsort(flat_R, stable=True)
    token_R = order_R // K
    counts = torch.bincount(flat_R, minlength=w1_EDH.shape[0]).tolist()
    pieces = torch.split(x_TD.index_select(0, token_R), counts)
    params = zip(pieces, w1_EDH.unbind(0), b1_EH.unbind(0), w2_EHD.unbind(0), b2_ED.unbind(0))
    y_RD = torch.cat([F.gelu(p @ w1 + b1) @ w2 + b2 for p, w1, b1, w2, b2 in params])
    y_RD = y_RD * weights_TK.reshape(-1)[order_R, None]
    return torch.zeros_like(x_TD).index_add(0, token_R, y_RD)


# ---------------------------------------------------------------------------------------------------------------
# Measurement


def make_inputs(case: Case, device: torch.device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    E, K, D, H, T = case.E, case.k, case.D, case.H, case.T

    def leaf(*shape, scale):
        return (torch.randn(*shape, generator=g) * scale).to(device).requires_grad_()

    logits_TE = torch.randn(T, E, generator=g)
    if case.routing == "skewed":
        logits_TE[:, 0] += 100.0
    top_TK, ids_TK = logits_TE.topk(K, dim=1)
    if case.routing == "balanced":  # token t's slot j -> expert (t * k + j) mod E: distinct per token, equal counts
        ids_TK = (torch.arange(T)[:, None] * K + torch.arange(K)[None, :]) % E
    moe = {
        "x_TD": leaf(T, D, scale=1.0),
        "ids_TK": ids_TK.to(device),
        "weights_TK": top_TK.softmax(1).to(device).requires_grad_(),
        "w1_EDH": leaf(E, D, H, scale=D**-0.5),
        "b1_EH": leaf(E, H, scale=0.1),
        "w2_EHD": leaf(E, H, D, scale=H**-0.5),
        "b2_ED": leaf(E, D, scale=0.1),
    }
    dense_a = [leaf(T * K, D, scale=1.0), leaf(H, D, scale=D**-0.5), leaf(H, scale=0.1)]
    dense_a += [leaf(D, H, scale=H**-0.5), leaf(D, scale=0.1)]
    dense_b = [moe["x_TD"], leaf(K * H, D, scale=D**-0.5), leaf(K * H, scale=0.1)]
    dense_b += [leaf(D, K * H, scale=(K * H) ** -0.5), leaf(D, scale=0.1)]
    grads = {"T": torch.randn(T, D, generator=g).to(device), "TK": torch.randn(T * K, D, generator=g).to(device)}
    return {"moe": moe, "dense_a": dense_a, "dense_b": dense_b, "grads": grads}


def methods(inputs: dict) -> dict[str, Callable[[], None]]:
    """name -> one forward + backward."""
    moe, grads = inputs["moe"], inputs["grads"]

    def dense(params, grad):
        x, w1, b1, w2, b2 = params
        return lambda: F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2).backward(grad)

    def reference(fn):
        return lambda: fn(**moe).backward(grads["T"])

    def engine(path):
        return lambda: expert_ffn_path(**moe, path=path)[0].backward(grads["T"])

    out = {
        "limit (a) T*k rows, D->H->D": dense(inputs["dense_a"], grads["TK"]),
        "limit (b) T rows, D->k*H->D": dense(inputs["dense_b"], grads["T"]),
        "eager per-expert loop": reference(eager_loop),
        "sorted slices, W.unbind": reference(sorted_slices),
        "engine (auto)": lambda: expert_ffn(**moe)[0].backward(grads["T"]),
    }
    for path in PATHS[1:]:  # the engine is the padded path
        if path != "grouped" or grouped_supported(moe["x_TD"], moe["w1_EDH"], moe["w2_EHD"]):
            out[f"engine path={path}"] = engine(path)
    return out


def _zero_grads(inputs: dict) -> None:
    for t in [*inputs["moe"].values(), *inputs["dense_a"], *inputs["dense_b"]]:
        t.grad = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_methods(fns: dict, inputs: dict, device: torch.device, reps: int, warmup: int) -> dict[str, float]:
    """Median seconds per call, the methods interleaved so that load changes hit them alike, in a new (seeded)
    random order each round: what ran just before a call changes its time by up to ~10 % at small sizes."""
    times = {name: [] for name in fns}
    rng = random.Random(0)
    for i in range(warmup + reps):
        for name, fn in rng.sample(list(fns.items()), len(fns)):
            _zero_grads(inputs)
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in times.items()}


def peak_memory(fn: Callable[[], None], inputs: dict, device: torch.device) -> float | None:
    """Bytes held at the peak of one call above what was held before it."""
    _zero_grads(inputs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:  # the raw allocation events (private API); FunctionEvents count nested allocations twice
        events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except AttributeError:
        return None
    held = peak = 0
    for _, nbytes in sorted(events):
        held += nbytes
        peak = max(peak, held)
    return float(peak)


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's start/stop lines, which its C++ side writes straight to file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def run_case(case: Case, device: torch.device, reps: int, warmup: int) -> dict:
    inputs = make_inputs(case, device)
    fns = methods(inputs)
    med = time_methods(fns, inputs, device, reps, warmup)
    mem = {name: peak_memory(fn, inputs, device) for name, fn in fns.items()}
    limit_names = [n for n in fns if n.startswith("limit")]
    limit = min(med[n] for n in limit_names)
    limit_mem = min(mem[n] for n in limit_names) if all(mem[n] for n in limit_names) else None
    smaller_limit = min(limit_names, key=lambda n: mem[n] or 0.0)
    limit_params = inputs["dense_a"][1:] if smaller_limit.startswith("limit (a)") else inputs["dense_b"][1:]
    moe_params = [inputs["moe"][k] for k in ("w1_EDH", "b1_EH", "w2_EHD", "b2_ED")]
    extra_grads = sum(p.numel() * p.element_size() for p in moe_params) - sum(
        p.numel() * p.element_size() for p in limit_params
    )
    path = "padded"  # the engine's path
    plan = plan_dispatch(inputs["moe"]["ids_TK"], case.E)
    engine = med["engine (auto)"]
    engine_mem = None if mem["engine (auto)"] is None or not limit_mem else mem["engine (auto)"] / limit_mem
    engine_mem_same = None if engine_mem is None else mem["engine (auto)"] / (limit_mem + extra_grads)
    rows = [
        {
            "method": name,
            "ms": med[name] * 1e3,
            "fraction_of_limit": limit / med[name],
            "engine_speedup": med[name] / engine,
            "peak_mb": None if mem[name] is None else mem[name] / 2**20,
            "mem_over_limit": None if mem[name] is None or not limit_mem else mem[name] / limit_mem,
        }
        for name in fns
    ]
    counts = plan.counts_E
    return {
        "name": case.name,
        "E": case.E,
        "k": case.k,
        "D": case.D,
        "H": case.H,
        "T": case.T,
        "routing": case.routing,
        "rows_per_expert_max_over_mean": round(float(counts.max()) / float(counts.float().mean()), 2),
        "path": path,
        "fraction_of_limit": round(limit / engine, 3),
        "speedup_vs_eager_loop": round(med["eager per-expert loop"] / engine, 2),
        "speedup_vs_sorted": round(med["sorted slices, W.unbind"] / engine, 2),
        "peak_mem_over_limit": None if engine_mem is None else round(engine_mem, 2),
        "peak_mem_over_limit_same_grads": None if engine_mem_same is None else round(engine_mem_same, 2),
        "table": rows,
    }


def format_case(result: dict) -> str:
    c = result
    routing = "" if c["routing"] == "random" else f" ({c['routing']})"
    head = (
        f"{c['name']}: E={c['E']} k={c['k']} D={c['D']} H={c['H']} T={c['T']}{routing}"
        f"  largest expert {c['rows_per_expert_max_over_mean']}x the mean;  engine path: {c['path']}"
    )
    lines = [head, f"  {'method':<30} {'median ms':>10} {'of limit':>9} {'engine x':>9} {'peak MB':>8} {'mem/lim':>8}"]
    for r in c["table"]:
        peak = "-" if r["peak_mb"] is None else f"{r['peak_mb']:.1f}"
        ratio = "-" if r["mem_over_limit"] is None else f"{r['mem_over_limit']:.2f}"
        lines.append(
            f"  {r['method']:<30} {r['ms']:>10.2f} {r['fraction_of_limit']:>9.2f} {r['engine_speedup']:>9.2f}"
            f" {peak:>8} {ratio:>8}"
        )
    return "\n".join(lines)


ROUTINGS = ("random", "skewed", "balanced")


def parse_shape(text: str) -> Case:
    parts = text.split(",")
    routing = parts.pop() if parts[-1] in ROUTINGS else "random"
    try:
        E, k, D, H, T = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape wants E,k,D,H,T[,{'|'.join(ROUTINGS)}], got {text!r}") from None
    if not 1 <= k <= E or min(D, H, T) < 1:
        raise argparse.ArgumentTypeError(f"--shape wants positive sizes and 1 <= k <= E, got {text!r}")
    return Case(f"E{E}-k{k}-D{D}-H{H}-T{T}{'' if routing == 'random' else '-' + routing}", E, k, D, H, T, routing)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--shape", action="append", type=parse_shape, default=[], help="extra case E,k,D,H,T[,skewed|balanced]"
    )
    p.add_argument("--only", action="append", default=[], help="run only these named cases (and --shape ones)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--reps", type=int, default=7, help="timed repetitions per method (median; >= 5)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--system-malloc", action="store_true", help="leave glibc's malloc policy as it is (see below)")
    args = p.parse_args(argv)
    if args.reps < 5:
        p.error(f"--reps {args.reps}: medians need at least 5 repetitions")
    unknown = sorted(set(args.only) - {c.name for c in CASES})
    if unknown:
        p.error(f"unknown case {', '.join(unknown)}; the cases are {', '.join(c.name for c in CASES)}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    retained = device.type == "cpu" and not args.system_malloc and retain_freed_memory()
    cases = [c for c in CASES if not args.only or c.name in args.only] + args.shape
    info = f"torch {torch.__version__}, {device}" + (f", {args.threads} threads" if device.type == "cpu" else "")
    info += ", freed memory retained (as multimoe.train does)" if retained else ""
    if device.type == "cuda":
        info += f" ({torch.cuda.get_device_name(device)})"
    print(f"MoE layer, forward + backward, float32, {info}; medians of {args.reps} after {args.warmup} warm-up")
    results = []
    for case in cases:
        result = run_case(case, device, args.reps, args.warmup)
        print(format_case(result), flush=True)
        results.append(result)
    print("\nsummary")
    columns = f"{'of limit':>9} {'vs eager':>9} {'vs sorted':>10} {'mem/lim':>8} {'same grads':>10}"
    width = max([22] + [len(r["name"]) for r in results])
    print(f"  {'case':<{width}} {'path':<8} {columns}")
    for r in results:
        mem = "-" if r["peak_mem_over_limit"] is None else f"{r['peak_mem_over_limit']:.2f}"
        same = "-" if r["peak_mem_over_limit_same_grads"] is None else f"{r['peak_mem_over_limit_same_grads']:.2f}"
        print(
            f"  {r['name']:<{width}} {r['path']:<8} {r['fraction_of_limit']:>9.2f} {r['speedup_vs_eager_loop']:>9.2f}"
            f" {r['speedup_vs_sorted']:>10.2f} {mem:>8} {same:>10}"
        )
    summary = [{k: v for k, v in r.items() if k != "table"} for r in results]
    head = {"device": str(device), "threads": args.threads, "torch": torch.__version__, "retained_memory": retained}
    print(json.dumps({**head, "cases": summary}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
