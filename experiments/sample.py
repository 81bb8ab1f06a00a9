"""Continue a prompt with a trained language model.

    python -m experiments.sample RUN_DIR --prompt TEXT [--length N] [--method sample|greedy|beam]
                                 [--temperature T] [--top_k K] [--beam_size W] [--seed S]
                                 [--window C] [--best]

Loads the run's saved config and its latest (or best) checkpoint, fills the key/value cache
with the prompt in one pass, then decodes token by token through ``zoo.decoding``.

The model is never fed more than the window of C tokens it was trained on (the run's
``data.context_length``), so any ``--length`` works: once C tokens fill the cache, it is
rebuilt from the last C / 2 of them at positions 0 .. C / 2 - 1
(``zoo.decoding.sliding_window``), and every token is predicted from the more than C / 2
tokens before it. With learned positions (the presets') the rows past C - 1 are untrained,
so ``--window`` may only shrink the window; sinusoidal and rotary positions are defined at
any position, and ``--window`` may then exceed the trained context, with no guarantee of
quality past it.
"""

import argparse
import functools
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import runner
from experiments.data.tokenizer import EOS_ID, PAD_ID, UNK_ID
from zoo import decoding
from zoo.models.protocol import on_kernel


def continue_prompt(
    model: Any,
    prompt: np.ndarray,
    *,
    window: int,
    length: int,
    method: str,
    temperature: float,
    top_k: int | None,
    beam_size: int,
    seed: int,
    keep: int | None = None,
) -> np.ndarray:
    """The ``length`` tokens after the int ``prompt [P]`` (P >= 1) from a language model of
    ``zoo.models.protocol`` with a ``config`` (a ``TransformerLM``), fed at most ``window``
    tokens at a time (``keep``: see ``zoo.decoding.sliding_window``)."""
    if prompt.size == 0:
        raise ValueError("the prompt must encode to at least one token")
    if length < 1:
        raise ValueError(f"--length must be >= 1, got {length}")
    if model.config.positions == "learned" and window > model.config.max_length:
        raise ValueError(
            f"--window {window} exceeds the model's {model.config.max_length} learned positions"
        )
    if model.config.kernel == "ring":  # trained sequence-parallel; decoding runs on one device
        model = on_kernel(model, "auto")
    graphdef, state = nnx.split(model)
    tokens = _generate(
        graphdef,
        state,
        jnp.asarray(prompt[None], jnp.int32),
        jax.random.key(seed),
        window=window,
        keep=keep,
        length=length,
        method=method,
        temperature=temperature,
        top_k=top_k,
        beam_size=beam_size,
    )
    return np.asarray(tokens[0])


@functools.partial(
    jax.jit,
    static_argnames=(
        "graphdef",
        "window",
        "keep",
        "length",
        "method",
        "temperature",
        "top_k",
        "beam_size",
    ),
)
def _generate(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    prompt: jax.Array,
    rng: jax.Array,
    *,
    window: int,
    keep: int | None,
    length: int,
    method: str,
    temperature: float,
    top_k: int | None,
    beam_size: int,
) -> jax.Array:
    model = nnx.merge(graphdef, state)
    start = decoding.sliding_window(
        lambda p: model.init_decode_state(model.encode(p), window),
        model.step,
        prompt,
        window=window,
        keep=keep,
    )
    common: dict[str, Any] = dict(
        bos_id=start.bos_id, eos_id=EOS_ID, pad_id=PAD_ID, max_length=length
    )
    if method == "greedy":
        return decoding.greedy_search(start.step_fn, start.init_state, **common)
    if method == "beam":
        result = decoding.beam_search(
            start.step_fn, start.init_state, beam_size=beam_size, **common
        )
        return result.tokens[:, 0]
    return decoding.sample(
        start.step_fn, start.init_state, rng, temperature=temperature, top_k=top_k, **common
    )


def encode_prompt(data: Any, prompt: str) -> np.ndarray:
    """The prompt's ids; a character the tokenizer does not know is an error naming it."""
    ids = np.asarray(data.encode(prompt))
    if np.any(ids == UNK_ID):
        unknown = sorted({c for c in prompt if np.any(np.asarray(data.encode(c)) == UNK_ID)})
        raise ValueError(
            f"the prompt has characters outside the model's vocabulary: "
            f"{', '.join(map(repr, unknown)) or repr(prompt)}"
        )
    return ids


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.sample",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", type=pathlib.Path)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--length", type=int, default=200, help="tokens to generate, >= 1")
    parser.add_argument("--method", choices=("sample", "greedy", "beam"), default="sample")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--beam_size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--window",
        type=int,
        default=None,
        help="most tokens the model is fed at once (default: the run's data.context_length); "
        "with learned positions at most that, with sinusoidal or rotary positions any size",
    )
    parser.add_argument("--best", action="store_true", help="use the best checkpoint")
    args = parser.parse_args(argv)
    try:
        loaded = runner.load_run(args.run_dir, best=args.best)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    if loaded.experiment != "lm":
        raise SystemExit(f"error: {args.run_dir} is not a language-model run (experiment lm)")
    model, step = loaded.model, loaded.step
    config = loaded.setup.config  # the run's saved config
    trained = config.data.context_length
    window = trained if args.window is None else args.window
    data = loaded.setup.held_out.data  # the tokenizer
    try:
        if window < 1:
            raise ValueError(f"--window must be >= 1, got {window}")
        if config.model.positions == "learned" and window > trained:
            raise ValueError(
                f"--window {window} exceeds the trained context of {trained} tokens "
                "(data.context_length): the learned positions past it are untrained"
            )
        tokens = continue_prompt(
            model,
            encode_prompt(data, args.prompt),
            window=window,
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
