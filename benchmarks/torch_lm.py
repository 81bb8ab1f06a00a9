"""A PyTorch twin of ``zoo.models.transformer.TransformerLM``: the peer of the model benchmark.

Built from the same :class:`TransformerConfig`, it has the zoo model's layer order (pre- or
post-LN residual sublayers, a final LayerNorm when pre-LN), activation (GELU is the tanh
approximation, as ``jax.nn.gelu``), positions (learned, sinusoidal or rotary, rotate-half),
tied or untied output projection, biases, grouped-query heads, dropout placement and
initializers; its submodules carry the zoo's parameter names (``decoder.blocks.0.
self_attention.query`` ...), so :func:`load_zoo_parameters` copies a zoo model's weights in
one to one and refuses any mismatch. Attention is ``F.scaled_dot_product_attention``, the
kernel a PyTorch user gets (its CPU flash kernel).

:class:`TrainStep` is the runner's step in PyTorch: cross-entropy over non-padding
targets, global-norm clipping, AdamW (decoupled weight decay on every parameter, as
``optax.adamw`` without a mask) on the same warm-up schedule. ``torch.compile`` wraps the
loss (model and cross-entropy, as nanoGPT compiles its model); the optimizer runs eagerly.

Only ``benchmarks/`` imports torch; ``zoo/`` never does.
"""

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from experiments.config import TrainConfig
from zoo.models.transformer import TransformerConfig

__all__ = [
    "TorchLM",
    "TrainStep",
    "count_parameters",
    "load_zoo_parameters",
    "values_only",
    "without_attention",
]

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": functools.partial(F.gelu, approximate="tanh"),  # jax.nn.gelu's default
}


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters; a tied matrix counts once, as in the zoo."""
    return sum(p.numel() for p in model.parameters())


def _inverse_frequencies(dim: int, base: float = 10000.0) -> torch.Tensor:
    """``base^(-2i / dim)`` for ``i < dim / 2``, in float64 then float32 (as the zoo)."""
    return torch.from_numpy(np.power(base, -np.arange(0, dim, 2) / dim).astype(np.float32))


def _linear(d_in: int, d_out: int, bias: bool, init: Callable[[torch.Tensor], Any]) -> nn.Linear:
    layer = nn.Linear(d_in, d_out, bias=bias)
    init(layer.weight)  # fan-in and fan-out of [out, in] equal those of the zoo's [in, out]
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def _initializers(config: TransformerConfig) -> tuple[Callable[[torch.Tensor], Any], ...]:
    """(weights, residual-branch output weights, embeddings), as the zoo's ``_initializers``."""
    if config.init_std is None:
        embed_std = config.model_dim**-0.5
        return nn.init.xavier_uniform_, nn.init.xavier_uniform_, _normal(embed_std)
    out_std = config.init_std / math.sqrt(2 * config.num_layers)
    return _normal(config.init_std), _normal(out_std), _normal(config.init_std)


def _normal(std: float) -> Callable[[torch.Tensor], Any]:
    return functools.partial(nn.init.normal_, mean=0.0, std=std)


class _Attention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        init, out_init, _ = _initializers(config)
        D, N, H = config.model_dim, config.num_heads, config.head_dim
        K = config.num_kv_heads or N
        bias = config.attention_bias
        self.N, self.K, self.H = N, K, H
        self.rotary = config.positions == "rotary"
        self.dropout_rate = config.attention_dropout_rate
        self.query = _linear(D, N * H, bias, init)
        self.key = _linear(D, K * H, bias, init)
        self.value = _linear(D, K * H, bias, init)
        self.attend: Callable[..., torch.Tensor] = F.scaled_dot_product_attention
        self.out = _linear(N * H, D, bias, out_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.query(x).view(B, T, self.N, self.H).transpose(1, 2)  # (B, N, T, H)
        k = self.key(x).view(B, T, self.K, self.H).transpose(1, 2)  # (B, K, T, H)
        v = self.value(x).view(B, T, self.K, self.H).transpose(1, 2)
        if self.rotary:
            q, k = _rotate(q), _rotate(k)
        out = self.attend(
            q,
            k,
            v,
            is_causal=True,
            dropout_p=self.dropout_rate if self.training else 0.0,
            enable_gqa=self.K != self.N,
        )
        return self.out(out.transpose(1, 2).reshape(B, T, self.N * self.H))


def _rotate(x: torch.Tensor) -> torch.Tensor:
    """Rotary positions, the zoo's rotate-half convention, on ``(B, heads, T, H)``."""
    T, H = x.shape[-2:]
    angles = torch.arange(T, dtype=torch.float32)[:, None] * _inverse_frequencies(H)
    cos, sin = angles.cos(), angles.sin()  # (T, H/2)
    first, second = x[..., : H // 2], x[..., H // 2 :]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


class _FeedForward(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        init, out_init, _ = _initializers(config)
        self.activation = _ACTIVATIONS[config.activation]
        self.hidden = _linear(config.model_dim, config.ff_dim, True, init)
        self.output = _linear(config.ff_dim, config.model_dim, True, out_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.activation(self.hidden(x)))


def _norm(config: TransformerConfig) -> nn.LayerNorm:
    return nn.LayerNorm(config.model_dim, eps=config.layer_norm_epsilon)


class _Block(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.pre_norm = config.pre_norm
        self.self_attention = _Attention(config)
        self.self_attention_norm = _norm(config)
        self.feed_forward = _FeedForward(config)
        self.feed_forward_norm = _norm(config)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for sublayer, norm in (
            (self.self_attention, self.self_attention_norm),
            (self.feed_forward, self.feed_forward_norm),
        ):
            x = x + self.dropout(sublayer(norm(x) if self.pre_norm else x))
            x = x if self.pre_norm else norm(x)
        return x


class _Decoder(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.blocks = nn.ModuleList([_Block(config) for _ in range(config.num_layers)])
        self.final_norm = _norm(config) if config.pre_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.final_norm is None else self.final_norm(x)


class _Embedding(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        init = _initializers(config)[2]
        self.config = config
        self.tokens = nn.Embedding(config.vocab_size, config.model_dim)
        init(self.tokens.weight)
        self.positions = None
        if config.positions == "learned":
            self.positions = nn.Embedding(config.max_length, config.model_dim)
            init(self.positions.weight)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        T, D = tokens.shape[1], self.config.model_dim
        x = self.tokens(tokens)
        if self.config.scale_embeddings:
            x = x * math.sqrt(D)
        if self.positions is not None:
            x = x + self.positions(torch.arange(T))
        elif self.config.positions == "sinusoidal":
            angles = torch.arange(T, dtype=torch.float32)[:, None] * _inverse_frequencies(D)
            x = x + torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(T, D)
        return self.dropout(x)


class TorchLM(nn.Module):
    """``tokens (B, T)`` int64 -> logits ``(B, T, V)``, the zoo's TransformerLM in PyTorch."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.embed = _Embedding(config)
        self.decoder = _Decoder(config)
        self.head = None
        if not config.tie_embeddings:
            self.head = _linear(
                config.model_dim, config.vocab_size, False, _initializers(config)[0]
            )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.decoder(self.embed(tokens))
        if self.head is None:  # tied: the embedding matrix transposed (Vaswani et al. 3.4)
            return hidden @ self.embed.tokens.weight.T
        return self.head(hidden)


def values_only(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **_: Any) -> torch.Tensor:
    """``benchmarks.train_steps.values_only`` in PyTorch: each query gets its own value
    (B, N, T, H), none of the T x S work."""
    return v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)


def without_attention(model: TorchLM) -> TorchLM:
    """``model`` with every attention replaced by :func:`values_only`, in place."""
    for module in model.modules():
        if isinstance(module, _Attention):
            module.attend = values_only
    return model


def load_zoo_parameters(model: TorchLM, zoo_model: Any) -> None:
    """Copy a zoo ``TransformerLM``'s parameters into ``model``, name by name.

    Raises ValueError unless every zoo parameter lands on a torch parameter of the same shape
    (kernels transposed) and every torch parameter is written.
    """
    from flax import nnx

    renames = {"kernel": "weight", "embedding": "weight", "scale": "weight"}
    params = dict(model.named_parameters())
    written = set()
    for path, variable in nnx.to_flat_state(nnx.state(zoo_model, nnx.Param)):
        *prefix, leaf = (str(p) for p in path)
        name = ".".join([*prefix, renames.get(leaf, leaf)])
        value = torch.from_numpy(np.array(variable[...]))
        value = value.T if leaf == "kernel" else value
        if name not in params or params[name].shape != value.shape:
            found = tuple(params[name].shape) if name in params else "no such parameter"
            raise ValueError(
                f"zoo parameter {'.'.join([*prefix, leaf])} {tuple(value.shape)} has no torch "
                f"twin: {name} is {found}"
            )
        with torch.no_grad():
            params[name].copy_(value)
        written.add(name)
    missing = sorted(set(params) - written)
    if missing:
        raise ValueError(f"torch parameters without a zoo counterpart: {missing}")


def _schedule(train: TrainConfig) -> Callable[[int], float]:
    """The runner's learning-rate schedule (``make_optimizer``) as a multiple of the peak."""
    warmup = max(train.warmup_steps, 1)
    if train.schedule == "constant":
        return lambda step: min(step / warmup, 1.0)
    if train.schedule == "cosine":
        decay = max(train.steps, train.warmup_steps + 1) - warmup
        end = 0.1  # end_value = learning_rate / 10

        def cosine(step: int) -> float:
            if step < warmup:
                return step / warmup
            progress = min((step - warmup) / decay, 1.0)
            return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress))

        return cosine
    raise ValueError(
        f"train.schedule: the torch twin has 'constant' and 'cosine', got {train.schedule!r}"
    )


class TrainStep:
    """``step(tokens (B, T+1) int64) -> loss``: one optimizer update of ``model``.

    With ``compile`` the first call compiles (``torch.compile`` of model and loss); if that
    fails the step runs eagerly from then on and ``compile_error`` says why.
    """

    def __init__(self, model: TorchLM, train: TrainConfig, *, pad_id: int, compile: bool):
        if train.optimizer not in ("adam", "adamw"):
            raise ValueError(
                f"train.optimizer: the torch twin has 'adam' and 'adamw', got {train.optimizer!r}"
            )
        self.model, self.train, self.pad_id = model, train, pad_id
        decay = train.weight_decay if train.optimizer == "adamw" else 0.0
        # optax's defaults: b1 0.9, b2 0.999, eps 1e-8; decay scaled by the learning rate.
        self.optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=train.learning_rate,
            betas=(0.9, 0.999),
            eps=1e-8,
            weight_decay=decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _schedule(train))
        self.compiled = compile
        self.compile_error: str | None = None
        self._loss = torch.compile(self.loss) if compile else self.loss

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (nats) over the non-padding next tokens, as the zoo's lm task."""
        logits = self.model(tokens[:, :-1])
        return F.cross_entropy(
            logits.float().flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=self.pad_id
        )

    def __call__(self, tokens: torch.Tensor) -> float:
        self.model.train()
        try:
            loss = self._loss(tokens)
        except Exception as e:  # the first compiled call compiles: a compiler may fail
            if not self.compiled:
                raise
            self.compile_error = f"{type(e).__name__}: {str(e)[:300]}"
            self.compiled = False
            self._loss = self.loss
            loss = self._loss(tokens)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train.clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())
