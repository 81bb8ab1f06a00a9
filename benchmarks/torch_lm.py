"""A PyTorch twin of ``zoo.models.transformer.TransformerLM``: the peer of the model benchmark.

Built from the same :class:`TransformerConfig`, it has the zoo model's layer order (pre- or
post-LN), activation (GELU the tanh approximation, as ``jax.nn.gelu``), positions (learned,
sinusoidal or rotary, rotate-half), tied or untied output projection, biases, grouped-query
heads and dropout placement, and the zoo's parameter names (``decoder.blocks.0.self_attention.
query`` ...): :func:`load_zoo_parameters` copies a zoo model's weights in one to one, refusing
any mismatch (a twin has no initializers: it always starts from a zoo model's weights).
Attention is ``F.scaled_dot_product_attention``, what a PyTorch user gets. :class:`TrainStep`
is the runner's step: cross-entropy over non-padding targets, global-norm clipping, AdamW on
the same schedule; ``torch.compile`` wraps the loss (model and cross-entropy, as nanoGPT
compiles its model). Only ``benchmarks/`` imports torch; ``zoo/`` never does.
"""

import functools
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from flax import nnx
from torch import nn

from experiments.config import TrainConfig
from experiments.data.tokenizer import PAD_ID
from zoo.models.transformer import TransformerConfig

_GELU = functools.partial(F.gelu, approximate="tanh")  # jax.nn.gelu's default
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "gelu": _GELU}


def _inverse_frequencies(dim: int, base: float = 10000.0) -> torch.Tensor:
    """``base^(-2i / dim)`` for ``i < dim / 2``, in float64 then float32 (as the zoo)."""
    return torch.from_numpy(np.power(base, -np.arange(0, dim, 2) / dim).astype(np.float32))


def _norm(config: TransformerConfig) -> nn.LayerNorm:
    return nn.LayerNorm(config.model_dim, eps=config.layer_norm_epsilon)


class _Attention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        D, N, H, bias = config.model_dim, config.num_heads, config.head_dim, config.attention_bias
        self.N, self.K, self.H = N, config.num_kv_heads or N, H
        self.rotary = config.positions == "rotary"
        self.dropout_rate = config.attention_dropout_rate
        self.query = nn.Linear(D, N * H, bias=bias)
        self.key = nn.Linear(D, self.K * H, bias=bias)
        self.value = nn.Linear(D, self.K * H, bias=bias)
        self.attend: Callable[..., torch.Tensor] = F.scaled_dot_product_attention
        self.out = nn.Linear(N * H, D, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.query(x).view(B, T, self.N, self.H).transpose(1, 2)  # (B, N, T, H)
        k = self.key(x).view(B, T, self.K, self.H).transpose(1, 2)  # (B, K, T, H)
        v = self.value(x).view(B, T, self.K, self.H).transpose(1, 2)
        if self.rotary:
            q, k = _rotate(q), _rotate(k)
        dropout = self.dropout_rate if self.training else 0.0
        out = self.attend(q, k, v, is_causal=True, dropout_p=dropout, enable_gqa=self.K != self.N)
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
        self.activation = _ACTIVATIONS[config.activation]
        self.hidden = nn.Linear(config.model_dim, config.ff_dim)
        self.output = nn.Linear(config.ff_dim, config.model_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.activation(self.hidden(x)))


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


class _Embedding(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.tokens = nn.Embedding(config.vocab_size, config.model_dim)
        self.positions = None
        if config.positions == "learned":
            self.positions = nn.Embedding(config.max_length, config.model_dim)
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
        blocks = nn.ModuleList([_Block(config) for _ in range(config.num_layers)])
        self.decoder = nn.ModuleDict({"blocks": blocks})  # the zoo's decoder.blocks.0 ...
        if config.pre_norm:
            self.decoder["final_norm"] = _norm(config)
        self.head = None
        if not config.tie_embeddings:
            self.head = nn.Linear(config.model_dim, config.vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(tokens)
        for block in self.decoder["blocks"]:
            hidden = block(hidden)
        if "final_norm" in self.decoder:
            hidden = self.decoder["final_norm"](hidden)
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
    """Copy a zoo ``TransformerLM``'s parameters into ``model``, name by name; ValueError
    unless each lands on a torch parameter of its shape (kernels transposed) and all are written."""
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
            zoo_name = ".".join([*prefix, leaf])
            raise ValueError(f"zoo parameter {zoo_name} {tuple(value.shape)} has no torch twin: "
                             f"{name} is {found}")  # fmt: skip
        with torch.no_grad():
            params[name].copy_(value)
        written.add(name)
    if missing := sorted(set(params) - written):
        raise ValueError(f"torch parameters without a zoo counterpart: {missing}")


def _schedule(train: TrainConfig) -> Callable[[int], float]:
    """``make_optimizer``'s schedule of the lm presets as a multiple of the peak: a linear
    warm-up from 0, then cosine decay to a tenth (optax's ``warmup_cosine_decay_schedule``)."""
    if train.schedule != "cosine":
        raise ValueError(f"train.schedule: the torch twin has 'cosine', got {train.schedule!r}")
    warmup = max(train.warmup_steps, 1)
    decay = max(train.steps, train.warmup_steps + 1) - warmup

    def cosine(step: int) -> float:
        progress = min(max(step - warmup, 0) / decay, 1.0)
        return step / warmup if step < warmup else 0.55 + 0.45 * math.cos(math.pi * progress)

    return cosine


class TrainStep:
    """``step(tokens (B, T+1) int64) -> loss``: one optimizer update of ``model``. With
    ``compile`` the first call compiles; if that fails the step runs eagerly from then on and
    ``compile_error`` says why."""

    def __init__(self, model: TorchLM, train: TrainConfig, *, compile: bool):
        if train.optimizer not in ("adam", "adamw"):
            raise ValueError(f"train.optimizer: the twin has adam, adamw; not {train.optimizer!r}")
        self.model, self.train = model, train
        decay = train.weight_decay if train.optimizer == "adamw" else 0.0
        # optax's defaults: b1 0.9, b2 0.999, eps 1e-8; decay scaled by the learning rate.
        self.optimizer = torch.optim.AdamW(
            model.parameters(), train.learning_rate, (0.9, 0.999), 1e-8, weight_decay=decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _schedule(train))
        self.compiled, self.steps = compile, 0
        self.compile_error: str | None = None
        self._loss = torch.compile(self.loss) if compile else self.loss

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (nats) over the non-padding next tokens, as the zoo's lm task."""
        logits = self.model(tokens[:, :-1])
        return F.cross_entropy(
            logits.float().flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=PAD_ID
        )

    def __call__(self, tokens: torch.Tensor) -> float:
        self.model.train()
        try:
            loss = self._loss(tokens)
        except Exception as e:  # the first compiled call compiles: a compiler may fail
            if not self.compiled or self.steps:
                raise
            self.compile_error = f"{type(e).__name__}: {str(e)[:300]}"
            self.compiled, self._loss = False, self.loss
            loss = self._loss(tokens)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train.clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.steps += 1
        return float(loss.detach())


def twin_step(
    built: dict[str, Any], compile: bool, attention: bool = True
) -> tuple[Callable[[], float], dict[str, Any]]:
    """(one step, its record) of the twin of ``benchmarks.train_steps.make_zoo_step``'s LM,
    the zoo weights copied in (so before the zoo's first step, which donates them); attention
    skipped (:func:`without_attention`) unless ``attention``. The record has the first call's
    seconds and loss, and whether a second call with the same batch had to recompile."""
    model = TorchLM(built["model"].config)
    load_zoo_parameters(model, built["model"])  # one to one: the same parameter count
    step = TrainStep(
        model if attention else without_attention(model), built["train"], compile=compile
    )
    tokens = torch.from_numpy(built["batch"]["tokens"]).long()
    start = time.perf_counter()
    first_loss = step(tokens)
    record: dict[str, Any] = {"first_call_s": time.perf_counter() - start, "first_loss": first_loss}
    record["second_call_recompiled"] = False
    try:
        with torch.compiler.set_stance("fail_on_recompile"):
            step(tokens)
    except RuntimeError as e:  # the stance's; later steps recompile as they need to
        if "Detected recompile" not in str(e):
            raise
        record["second_call_recompiled"] = True
    record |= {"parameters": sum(p.numel() for p in model.parameters()),  # tied: counted once
               "threads": torch.get_num_threads(), "compile_error": step.compile_error,
               "mode": "torch.compile" if step.compiled else "eager"}  # fmt: skip
    return (lambda: step(tokens)), record
