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
