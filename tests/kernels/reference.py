"""Plain float64 NumPy attention: the reference every kernel test compares against.

Loops over batch and heads, written for clarity, not speed. The backward pass is the
textbook softmax-attention gradient (as in Dao et al. 2022, appendix B.2), derived by hand
rather than by JAX, so a kernel bug cannot hide in a shared autodiff path.
"""

import numpy as np


def attention_mask(
    B,
    T,
    S,
    *,
    mask=None,
    is_causal=False,
    window=None,
    q_lengths=None,
    kv_lengths=None,
    q_segments=None,
    kv_segments=None,
    N=1,
):
    """The combined bool mask [B, N, T, S] built by explicit loops."""
    out = np.ones((B, N, T, S), bool)
    if mask is not None:
        out &= np.broadcast_to(np.asarray(mask, bool), (B, N, T, S))
    for b in range(B):
        for t in range(T):
            for s in range(S):
                ok = True
                if is_causal:
                    ok &= s <= t
                if window is not None:
                    ok &= t - window[0] <= s <= t + window[1]
                if q_lengths is not None:
                    ok &= t < q_lengths[b]
                if kv_lengths is not None:
                    ok &= s < kv_lengths[b]
                if q_segments is not None:
                    ok &= q_segments[b, t] == kv_segments[b, s]
                if not ok:
                    out[b, :, t, s] = False
    return out


def attention_forward(q, k, v, *, bias=None, mask=None, scale=None):
    """q [B,T,N,H], k/v [B,S,K,H], bias/mask [B,N,T,S] -> out [B,T,N,H], weights [B,N,T,S]."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    G = N // K
    scale = H**-0.5 if scale is None else scale
    mask = np.ones((B, N, T, S), bool) if mask is None else np.broadcast_to(mask, (B, N, T, S))
    bias = np.zeros((B, N, T, S)) if bias is None else np.broadcast_to(bias, (B, N, T, S))
    out = np.zeros((B, T, N, H))
    weights = np.zeros((B, N, T, S))
    for b in range(B):
        for n in range(N):
            kn, vn = k[b, :, n // G], v[b, :, n // G]
            logits = q[b, :, n] @ kn.T * scale + bias[b, n]
            for t in range(T):
                row = mask[b, n, t]
                if not row.any():
                    continue
                e = np.exp(logits[t, row] - logits[t, row].max())
                weights[b, n, t, row] = e / e.sum()
            out[b, :, n] = weights[b, n] @ vn
    return out, weights


def attention_backward(q, k, v, d_out, *, bias=None, mask=None, scale=None):
    """Gradients (dq, dk, dv, dbias[B,N,T,S]) of sum(out * d_out)."""
    q, k, v, d_out = (np.asarray(x, np.float64) for x in (q, k, v, d_out))
    _, weights = attention_forward(q, k, v, bias=bias, mask=mask, scale=scale)
    B, _, N, H = q.shape
    K = k.shape[2]
    G = N // K
    scale = H**-0.5 if scale is None else scale
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    dbias = np.zeros_like(weights)
    for b in range(B):
        for n in range(N):
            g = n // G
            p = weights[b, n]
            dv[b, :, g] += p.T @ d_out[b, :, n]
            dp = d_out[b, :, n] @ v[b, :, g].T
            ds = p * (dp - (dp * p).sum(-1, keepdims=True))
            dbias[b, n] = ds
            dq[b, :, n] = ds @ k[b, :, g] * scale
            dk[b, :, g] += ds.T @ q[b, :, n] * scale
    return dq, dk, dv, dbias


# --------------------------------------------------------------------------------------------
# Helpers for test_parity.py and test_drop_in.py: the whole call of a kernel (any leading batch
# dims, broadcast bias and mask, -inf bias entries, a known dropout pattern), answered with
# the loops above.


def sum_to_shape(x, shape):
    """Sum ``x`` down to the broadcast ``shape`` it came from: the gradient of a broadcast."""
    x = np.asarray(x)
    x = x.sum(axis=tuple(range(x.ndim - len(shape))))
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and x.shape[i] != 1)
    return x.sum(axis=axes, keepdims=True).reshape(shape)


def attention_logsumexp(q, k, *, bias=None, mask=None, scale=None):
    """log sum_s exp(logits) over the attended keys, [B, T, N]; -inf where none is attended."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    G = N // K
    scale = H**-0.5 if scale is None else scale
    mask = np.ones((B, N, T, S), bool) if mask is None else np.broadcast_to(mask, (B, N, T, S))
    bias = np.zeros((B, N, T, S)) if bias is None else np.broadcast_to(bias, (B, N, T, S))
    lse = np.full((B, T, N), -np.inf)
    for b in range(B):
        for n in range(N):
            logits = q[b, :, n] @ k[b, :, n // G].T * scale + bias[b, n]
            for t in range(T):
                row = logits[t, mask[b, n, t]]
                if row.size:
                    lse[b, t, n] = row.max() + np.log(np.exp(row - row.max()).sum())
    return lse


def attention_with_dropout(q, k, v, d_out, keep, *, bias=None, mask=None, scale=None):
    """out = (weights * keep) @ v and the gradients (dq, dk, dv, dbias) of sum(out * d_out).

    ``keep`` [B, N, T, S] is a dropout pattern (0 or 1 / (1 - rate)) applied to the weights
    after the softmax. With A = weights * keep: dA = d_out v^T, d_weights = dA * keep, and the
    softmax backward as in :func:`attention_backward`.
    """
    q, k, v, d_out = (np.asarray(x, np.float64) for x in (q, k, v, d_out))
    _, weights = attention_forward(q, k, v, bias=bias, mask=mask, scale=scale)
    B, T, N, H = q.shape
    K = k.shape[2]
    G = N // K
    scale = H**-0.5 if scale is None else scale
    keep = np.broadcast_to(np.asarray(keep, np.float64), weights.shape)
    out = np.zeros((B, T, N, v.shape[-1]))
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    dbias = np.zeros_like(weights)
    for b in range(B):
        for n in range(N):
            g = n // G
            p, kept = weights[b, n], weights[b, n] * keep[b, n]
            out[b, :, n] = kept @ v[b, :, g]
            dv[b, :, g] += kept.T @ d_out[b, :, n]
            dp = (d_out[b, :, n] @ v[b, :, g].T) * keep[b, n]
            ds = p * (dp - (dp * p).sum(-1, keepdims=True))
            dbias[b, n] = ds
            dq[b, :, n] = ds @ k[b, :, g] * scale
            dk[b, :, g] += ds.T @ q[b, :, n] * scale
    return out, (dq, dk, dv, dbias)


def attention_call(
    q,
    k,
    v,
    d_out,
    *,
    bias=None,
    mask=None,
    is_causal=False,
    local_window_size=None,
    query_seq_lengths=None,
    key_value_seq_lengths=None,
    query_segment_ids=None,
    key_value_segment_ids=None,
    scale=None,
    keep=None,
):
    """What ``dot_product_attention(q, k, v, bias, mask, ..., return_residual=True)`` returns,
    and its gradients, for the keyword arguments of that call.

    Any leading batch dims: q [*batch, T, N, H], k and v [*batch, S, K, H]; bias and mask
    broadcast (right-aligned) to [*batch, N, T, S]; the mask attends where nonzero; a ``-inf``
    bias entry is masked like a False one. Lengths [*batch], segment ids [*batch, T] and
    [*batch, S]. ``keep``: an optional dropout pattern [*batch, N, T, S] (see
    :func:`attention_with_dropout`).

    Returns a dict of float64 arrays: ``out`` [*batch, T, N, H]; ``lse`` [*batch, T, N] (-inf
    where ``live`` is False); ``live`` bool [*batch, T, N], the rows with a key to attend;
    ``dq``, ``dk``, ``dv`` like their inputs; ``dbias`` of the bias's own shape (or None).
    """
    q, k, v, d_out = (np.asarray(x, np.float64) for x in (q, k, v, d_out))
    batch, (T, N, H) = q.shape[:-3], q.shape[-3:]
    S, K = k.shape[-3], k.shape[-2]
    Bf = int(np.prod(batch, dtype=int))
    weights_shape = (*batch, N, T, S)

    def flat(x, *tail):
        return None if x is None else np.reshape(x, (Bf, *tail))

    full_mask = np.ones(weights_shape, bool)
    if mask is not None:
        full_mask = full_mask & (np.broadcast_to(mask, weights_shape) != 0)
    full_bias = None
    if bias is not None:
        full_bias = np.broadcast_to(np.asarray(bias, np.float64), weights_shape)
        finite = np.isfinite(full_bias)
        full_mask = full_mask & finite
        full_bias = np.where(finite, full_bias, 0.0)
    window = local_window_size
    if isinstance(window, int):
        window = (window, window)
    combined = attention_mask(
        Bf,
        T,
        S,
        N=N,
        mask=flat(full_mask, N, T, S),
        is_causal=is_causal,
        window=window,
        q_lengths=flat(query_seq_lengths),
        kv_lengths=flat(key_value_seq_lengths),
        q_segments=flat(query_segment_ids, T),
        kv_segments=flat(key_value_segment_ids, S),
    )
    qf, kf, vf, dof = flat(q, T, N, H), flat(k, S, K, H), flat(v, S, K, H), flat(d_out, T, N, H)
    bf = flat(full_bias, N, T, S)
    if keep is None:
        out, _ = attention_forward(qf, kf, vf, bias=bf, mask=combined, scale=scale)
        dq, dk, dv, dbias = attention_backward(qf, kf, vf, dof, bias=bf, mask=combined, scale=scale)
    else:
        keep = flat(np.broadcast_to(keep, weights_shape), N, T, S)
        out, (dq, dk, dv, dbias) = attention_with_dropout(
            qf, kf, vf, dof, keep, bias=bf, mask=combined, scale=scale
        )
    lse = attention_logsumexp(qf, kf, bias=bf, mask=combined, scale=scale)
    return {
        "out": out.reshape(q.shape),
        "lse": lse.reshape((*batch, T, N)),
        "live": combined.any(-1).transpose(0, 2, 1).reshape((*batch, T, N)),
        "dq": dq.reshape(q.shape),
        "dk": dk.reshape(k.shape),
        "dv": dv.reshape(v.shape),
        "dbias": None
        if bias is None
        else sum_to_shape(dbias.reshape(weights_shape), np.shape(bias)),
    }
