"""The one protocol every model of the zoo speaks, and what is built on it.

Training calls a model on whole sequences (teacher forcing); decoding (``zoo.decoding``) goes
token by token through three methods, the same for RNNsearch, Show, Attend and Tell and both
Transformers::

    memory = model.encode(inputs)                         # once per input
    state = model.init_decode_state(memory, max_length)   # keep_weights=True: keep attention
    logits, state = model.step(tokens, state)             # tokens [B] -> logits [B, V]

``memory`` and ``state`` are pytrees whose every leaf has the batch axis first, so beam search
can tile and reorder them. With ``keep_weights=True`` the state also holds each decoded
token's attention weights (``state["weights"]`` for the recurrent models, ``state.weights``
per layer for the Transformers), carried along with their hypotheses. A language model's
memory is its prompt; decoding then starts from the prompt's last token.

Every model's config names its attention kernel (``config.kernel``); ``weights_kernel`` is the
name of the kernel of the same registry that returns attention weights, which the fast
kernels never form. :func:`on_weights_kernel` gives the same model on it, for the pictures.
"""

import dataclasses
from typing import Any, Protocol

from flax import nnx

from zoo.shapes import Array

__all__ = ["DecodingModel", "on_kernel", "on_weights_kernel"]


class DecodingModel(Protocol):
    """What ``zoo.decoding`` and the experiment runner need of a model."""

    config: Any  # a frozen dataclass with a ``kernel`` field
    weights_kernel: str

    def encode(self, inputs: Array) -> Any: ...

    def init_decode_state(
        self, memory: Any, max_length: int, *, keep_weights: bool = False
    ) -> Any: ...

    def step(self, tokens: Array, state: Any) -> tuple[Array, Any]: ...


def on_kernel(model: Any, kernel: str) -> Any:
    """``model`` (a :class:`DecodingModel`) with its attention on the kernel named ``kernel``,
    of the same registry: the same parameters (``nnx.state(model)``), so the same outputs.

    Its graph is built abstractly: nothing is initialized.
    """
    config = dataclasses.replace(model.config, kernel=kernel)
    build: Any = type(model)  # each model class takes (config, *, rngs)
    abstract = nnx.eval_shape(lambda: build(config, rngs=nnx.Rngs(0)))
    return nnx.merge(nnx.graphdef(abstract), nnx.state(model))


def on_weights_kernel(model: Any) -> Any:
    """``model`` on ``model.weights_kernel``: the same outputs, and it can also return the
    attention weights, which the fast kernels never form."""
    return on_kernel(model, model.weights_kernel)
