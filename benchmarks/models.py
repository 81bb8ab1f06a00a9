"""Model training-step benchmark: the zoo's runner steps against an identical PyTorch model.

    python -m benchmarks.models --mode quick   # a few minutes: B = 12, 5 timed steps each
    python -m benchmarks.models --mode full    # adds shakespeare_char at B = 64, 10 steps each

For every case a fresh subprocess builds the zoo's training step exactly as the runner does
(``benchmarks/train_steps.py``: the preset's model and loss, ``train_step`` with
``make_optimizer``'s AdamW, donated state), measures its compilation (JAX's trace / lower /
XLA compile events of the first call) and checks that a second call with the same shapes
compiles nothing. For the decoder-only LM it also builds the PyTorch twin
(``benchmarks/torch_lm.py``) twice, eager and under ``torch.compile``, asserts that the
parameter counts are equal and copies the zoo's initial weights in, so all of them start
from the same point on the same batch (their first losses are reported side by side). Then
every variant is timed *interleaved* (A B C A B C ...) after warm-up; the reported step time
is the median (``benchmarks/timing.py``: samples taken while other processes used under 10%
of the machine when there are such, contention recorded). The same process measures the
dense float32 matmul rate of ``jnp.dot`` and ``torch.matmul`` as the roofline.

Model FLOPs (LM only): ``6 P + 12 L D T`` per token (PaLM appendix B, nanoGPT's
``estimate_mfu``; P = parameters less the learned position table), see
``train_steps.lm_flops_per_token``. RNNsearch and Show-Attend-Tell have no attention-kernel
choice (their additive attention has one implementation); they are timed as they are.

Results: ``<out>/results.json``, ``<out>/results.md``, ``<out>/models.png``.
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.models_report import TORCH_NO_ATTENTION

LM_KERNELS = ("reference", "blockwise")
TORCH_MODES = ("eager", "compile")
FLOPS_FORMULA = "6 * (parameters - learned position table) + 12 * L * D * T per token"


@dataclasses.dataclass(frozen=True)
class Case:
    model: str  # "<name>/<preset>" of benchmarks.train_steps.make_zoo_step
    batch_size: int
    # Zoo attention kernels to time; empty when the model has no kernel choice.
    kernels: tuple[str, ...] = ()
    # PyTorch twins to time as well (LM only): "eager" and/or "compile" (torch.compile).
    torch: tuple[str, ...] = ()
    # LM only: also time the zoo step with attention skipped (zoo.none), and the eager twin
    # (torch.eager.none) when torch twins are timed, so the report splits each step into
    # attention and the rest.
    attention_cost: bool = False

    def __post_init__(self) -> None:
        if (self.torch or self.attention_cost) and not self.model.startswith("lm/"):
            raise ValueError(
                f"only the LM has a PyTorch twin and a kernel to skip, got torch={self.torch}, "
                f"attention_cost={self.attention_cost} for {self.model}"
            )
        if set(self.torch) - set(TORCH_MODES):
            raise ValueError(f"torch modes must be among {TORCH_MODES}, got {self.torch}")
        if set(self.kernels) - set(LM_KERNELS):
            raise ValueError(f"kernels must be among {LM_KERNELS}, got {self.kernels}")

    @property
    def name(self) -> str:
        return f"{self.model} B={self.batch_size}"


def sweep(mode: str) -> list[Case]:
    lm = [
        Case("lm/tiny", 12, LM_KERNELS, TORCH_MODES, attention_cost=True),
        Case("lm/shakespeare_char", 12, LM_KERNELS, TORCH_MODES, attention_cost=True),
    ]
    if mode == "full":
        lm.append(Case("lm/shakespeare_char", 64, LM_KERNELS, TORCH_MODES))
    # The tiny presets' own batch sizes.
    return [*lm, Case("rnnsearch/tiny", 64), Case("sat/tiny", 48)]


# --------------------------------------------------------------------------------------
# Worker side: runs inside the fresh subprocess.


def _torch_twin(
    built: dict[str, Any], compile: bool, attention: bool = True
) -> tuple[Any, dict[str, Any]]:
    """(step callable, record) of the PyTorch twin of a built zoo LM step, zoo weights in;
    without attention (torch_lm.values_only) unless ``attention``."""
    import torch

    from benchmarks import torch_lm
    from experiments.data.tokenizer import PAD_ID

    model = torch_lm.TorchLM(built["model"].config)
    parameters = torch_lm.count_parameters(model)
    if parameters != built["parameters"]:
        raise RuntimeError(
            f"the torch twin has {parameters:,} parameters, the zoo model {built['parameters']:,}"
        )
    torch_lm.load_zoo_parameters(model, built["model"])
    if not attention:
        torch_lm.without_attention(model)
    step = torch_lm.TrainStep(model, built["train"], pad_id=PAD_ID, compile=compile)
    tokens = torch.from_numpy(built["batch"]["tokens"]).long()
    record = _torch_first_calls(lambda: step(tokens))
    record.update(
        parameters=parameters,
        threads=torch.get_num_threads(),
        mode="torch.compile" if step.compiled else "eager",
        compile_error=step.compile_error,
    )
    return (lambda: step(tokens)), record


def _torch_first_calls(run: Any) -> dict[str, Any]:
    from torch._dynamo.utils import counters

    start = time.perf_counter()
    first_loss = run()
    first_call_s = time.perf_counter() - start
    graphs = counters["stats"]["unique_graphs"]
    run()
    return {
        "first_call_s": first_call_s,
        "first_loss": first_loss,
        # torch.compile's graphs made by the second call: 0 when nothing was recompiled.
        "second_call_new_graphs": counters["stats"]["unique_graphs"] - graphs,
        "inductor_cache_hits": counters["inductor"]["fxgraph_cache_hit"],
    }


def worker(case: Case, repeats: int, warmup: int = 2) -> dict[str, Any]:
    from benchmarks.harness import dense_matmul, race, time_call
    from benchmarks.train_steps import NO_ATTENTION, compile_report, make_zoo_step

    result: dict[str, Any] = {"matmul_gflops": dense_matmul({}), "impls": {}}
    runs: dict[str, Any] = {}
    kernels = case.kernels or ("reference",)
    if case.attention_cost:
        kernels = (*kernels, NO_ATTENTION)
    for i, kernel in enumerate(kernels):
        built = make_zoo_step(case.model, batch_size=case.batch_size, kernel=kernel)
        result.update(
            parameters=built["parameters"],
            tokens_per_step=built["tokens"],
            flops_per_step=built["flops"],
        )
        if i == 0:
            # Before the zoo's first step: the step donates the weights the twins copy.
            for mode in case.torch:
                run, record = _torch_twin(built, compile=mode == "compile")
                result["impls"][f"torch.{mode}"] = record
                if record["compile_error"]:
                    continue  # it ran eagerly: torch.eager is that measurement already
                runs[f"torch.{mode}"] = run
            if case.attention_cost and case.torch:
                run, record = _torch_twin(built, compile=False, attention=False)
                result["impls"][TORCH_NO_ATTENTION] = record
                runs[TORCH_NO_ATTENTION] = run
        name = f"zoo.{kernel}" if case.kernels else "zoo"
        result["impls"][name] = {
            "kernel": kernel if case.kernels else None,
            "parameters": built["parameters"],
            **compile_report(built["step"]),
        }
        runs[name] = built["step"]
    # zoo first, then torch: the order of each interleaved round.
    runs = dict(sorted(runs.items(), key=lambda item: not item[0].startswith("zoo")))
    warm = {name: [time_call(run)[0] for _ in range(warmup)] for name, run in runs.items()}
    round_s = sum(min(times) for times in warm.values())
    samples = race(runs, repeats=repeats, budget_s=max(30.0, 2 * repeats * round_s))
    best_matmul = max(result["matmul_gflops"].values())
    for name, s in samples.items():
        summary = s.summary(0.1)
        median = summary["median_s"]
        summary.update(
            warmup_s=warm[name],
            steps_per_s=1 / median,
            tokens_per_s=result["tokens_per_step"] / median,
        )
        if result["flops_per_step"]:
            gflops = result["flops_per_step"] / median / 1e9
            summary.update(model_gflops=gflops, of_matmul=gflops / best_matmul)
        result["impls"][name].update(summary)
    return result


# --------------------------------------------------------------------------------------
# Driver side.


def _spawn(case: Case, repeats: int, timeout: float) -> dict[str, Any]:
    from benchmarks.timing import spawn

    args = ["--worker", json.dumps(dataclasses.asdict(case)), "--repeats", str(repeats)]
    return spawn("benchmarks.models", args, timeout)


def _case_from_json(spec: str) -> Case:
    values = json.loads(spec)
    return Case(**{**values, "kernels": tuple(values["kernels"]), "torch": tuple(values["torch"])})


def run_sweep(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.models_report import save
    from benchmarks.timing import machine_info

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = sweep(args.mode)
    if args.models:
        cases = [c for c in cases if c.model in args.models.split(",")]
    results: dict[str, Any] = {
        "machine": machine_info(),
        "mode": args.mode,
        "repeats": args.repeats,
        "flops_formula": FLOPS_FORMULA,
        "cases": [],
    }
    started = time.time()
    for n, case in enumerate(cases):
        print(f"[{n + 1}/{len(cases)}] {case.name}", flush=True)
        entry = {"case": dataclasses.asdict(case), **_spawn(case, args.repeats, args.timeout)}
        _print_entry(entry)
        results["cases"].append(entry)
        save(results, out)
    results["elapsed_s"] = time.time() - started
    save(results, out)
    print(f"wrote {out}/results.json, results.md, models.png", flush=True)
    return results


def _print_entry(entry: dict[str, Any]) -> None:
    if "error" in entry:
        print("   error:", entry["error"], flush=True)
    for name, r in entry.get("impls", {}).items():
        parts = [f"   {name:14s}"]
        if "median_s" in r:
            parts.append(f"{r['median_s'] * 1e3:9.1f} ms/step {r['tokens_per_s']:9.0f} tok/s")
        if "compile_s" in r:
            parts.append(f"compile {r['lower_s'] + r['compile_s']:.1f} s")
        if r.get("compile_error"):
            parts.append("torch.compile failed: " + r["compile_error"][:80])
        print(" ".join(parts), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("quick", "full"), default="quick")
    parser.add_argument(
        "--out", default=None, help="directory (default benchmarks/results/models/<mode>)"
    )
    parser.add_argument("--models", default=None, help="comma-separated subset, e.g. lm/tiny")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per variant")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (10 if args.mode == "full" else 5)
    if args.worker:
        print(json.dumps(worker(_case_from_json(args.worker), args.repeats)), flush=True)
        return
    args.out = args.out or f"benchmarks/results/models/{args.mode}"
    run_sweep(args)


if __name__ == "__main__":
    main()
