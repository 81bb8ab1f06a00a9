"""The losses every task shares: masked token cross-entropy and accuracy, as sums and counts.

Sums rather than means, so that one function serves training (divide by the count:
:func:`mean_cross_entropy`) and evaluation (:func:`nll_sums` added up over batches by the
runner, divided once at the end by :func:`held_out_loss`: a mean over every token of the split,
not a mean of batch means). The log-softmax runs in float32 whatever the model's compute dtype.
"""

import jax
import jax.numpy as jnp
import optax

from experiments.data.tokenizer import PAD_ID

__all__ = [
    "held_out_loss",
    "masked_cross_entropy",
    "mean_cross_entropy",
    "nll_sums",
    "token_accuracy",
]


def masked_cross_entropy(
    logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0, pad_id: int = PAD_ID
) -> tuple[jax.Array, jax.Array]:
    """``(summed cross-entropy in nats, token count)`` over the labels that are not ``pad_id``.

    ``logits [..., V]``, int ``labels [...]``; ``label_smoothing`` mixes the one-hot targets
    with the uniform distribution (Szegedy et al. 2016; Vaswani et al. 2017, sec. 5.4).
    """
    logits = logits.astype(jnp.float32)
    real = labels != pad_id
    if label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        losses = optax.softmax_cross_entropy(logits, targets)
    else:
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.where(real, losses, 0.0).sum(), real.sum()


def token_accuracy(logits: jax.Array, labels: jax.Array, *, pad_id: int = PAD_ID) -> jax.Array:
    """How many labels that are not ``pad_id`` are the argmax of their logits."""
    return ((logits.argmax(-1) == labels) & (labels != pad_id)).sum()


def mean_cross_entropy(
    logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0
) -> tuple[jax.Array, jax.Array]:
    """``(cross-entropy per real label, their count)``: a training batch's loss, and the count
    (at least 1, for a batch of padding) that divides the task's other per-token sums."""
    total, count = masked_cross_entropy(logits, labels, label_smoothing=label_smoothing)
    count = jnp.maximum(count, 1)
    return total / count, count


def nll_sums(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """A held-out batch's summed cross-entropy and label count: ``{"nll", "tokens"}``."""
    total, count = masked_cross_entropy(logits, labels)
    return {"nll": total, "tokens": count}


def held_out_loss(totals: dict[str, float]) -> float:
    """Mean cross-entropy per label over a split, from its :func:`nll_sums` added up."""
    return totals["nll"] / max(totals["tokens"], 1.0)
