"""Continue a prompt with a trained language model.

    python -m experiments.sample RUN_DIR --prompt TEXT [--length N] [--method sample|greedy|beam]
                                 [--temperature T] [--top_k K] [--beam_size W] [--seed S] [--best]

Loads the run's saved config and its latest (or best) checkpoint, fills the key/value cache
with the prompt in one pass, then decodes token by token through ``zoo.decoding``.
"""

import argparse
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import runner
from experiments.data.tokenizer import EOS_ID, PAD_ID
from zoo import decoding


def continue_prompt(
    model: nnx.Module,
    prompt: np.ndarray,
    *,
    length: int,
    method: str,
    temperature: float,
    top_k: int | None,
    beam_size: int,
    seed: int,
) -> np.ndarray:
    """The ``length`` tokens after the int ``prompt [P]`` (P >= 1)."""
    if prompt.size == 0:
        raise ValueError("the prompt must encode to at least one token")
    total = prompt.size + length
    limit = model.config.max_length if model.config.positions == "learned" else None
    if limit is not None and total > limit:
        raise ValueError(
            f"prompt ({prompt.size} tokens) + --length ({length}) = {total} exceeds the model's "
            f"context of {limit} positions"
        )
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state: nnx.State, prompt: jax.Array, rng: jax.Array) -> jax.Array:
        model = nnx.merge(graphdef, state)
        # The cache holds all but the last prompt token; decoding starts from the last one.
        cache = model.init_decode_state(model.encode(prompt), total)
        start = prompt[:, -1]
        common = dict(bos_id=start, eos_id=EOS_ID, pad_id=PAD_ID, max_length=length)
        if method == "greedy":
            return decoding.greedy_search(model.step, cache, **common)
        if method == "beam":
            result = decoding.beam_search(model.step, cache, beam_size=beam_size, **common)
            return result.tokens[:, 0]
        return decoding.sample(
            model.step, cache, rng, temperature=temperature, top_k=top_k, **common
        )

    tokens = run(state, jnp.asarray(prompt[None], jnp.int32), jax.random.key(seed))
    return np.asarray(tokens[0])


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m experiments.sample", description=__doc__)
    parser.add_argument("run_dir", type=pathlib.Path)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--length", type=int, default=200, help="tokens to generate")
    parser.add_argument("--method", choices=("sample", "greedy", "beam"), default="sample")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--beam_size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--best", action="store_true", help="use the best checkpoint")
    args = parser.parse_args(argv)
    try:
        loaded = runner.load_run(args.run_dir, best=args.best)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    if loaded.experiment != "lm":
        raise SystemExit(f"error: {args.run_dir} is not a language-model run (experiment lm)")
    model, step = loaded.model, loaded.step
    data = loaded.setup.held_out.data  # the tokenizer
    try:
        tokens = continue_prompt(
            model,
            data.encode(args.prompt),
            length=args.length,
            method=args.method,
            temperature=args.temperature,
            top_k=args.top_k,
            beam_size=args.beam_size,
            seed=args.seed,
        )
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    text = data.decode(tokens[tokens != PAD_ID])
    print(f"[step {step}] {args.prompt}{text}")
    return text


if __name__ == "__main__":
    main()
