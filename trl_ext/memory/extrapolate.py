"""Extrapolation of reduced traces to a model's real depth and sequence length (pure arithmetic, no torch).

A CPU trace (`trl_ext.memory.trace.LiveBytesTracer.result()`) of a 7B/8B model at its real depth and length takes
hours on a few cores; at one or two decoder layers and a few hundred tokens it takes minutes. Every term of a
training step's live bytes is, with SDPA/flash attention (no `T x T` tensor), of the form

    memory(d, L) = a + b*d + c*L + e*d*L

in the depth `d` and the length `L`: `a` the embeddings and head, `b*d` per-layer weights and adapters, `c*L` the
LM head's buffers and the tokens outside the layers, `e*d*L` the saved activations (or, with checkpointing, the
saved layer inputs) and the KV cache. Four traces on the grid `(d1, L1), (d1, L2), (d2, L1), (d2, L2)` determine
the four coefficients exactly, for every phase's peak and for every category of its breakdown; the value at any
`(d, L)` is then the bilinear interpolation (extrapolation) of the grid. With one length (or one depth) it reduces
to a line in depth (or length).

The peak is a maximum over the moments of a step; the fit holds while the same moment sets the peak at the real
settings as on the grid (e.g. a layer's backward, not the LM head). A point traced directly (`extrapolation_error`)
is how a run checks that.
"""

from __future__ import annotations


def _weights(axis: tuple[int, ...], x: float) -> list[tuple[int, float]]:
    """Linear-interpolation weights of `x` on the first two values of `axis` (one value: weight 1)."""
    if len(axis) == 1:
        return [(axis[0], 1.0)]
    x1, x2 = axis[0], axis[1]
    w = (x - x1) / (x2 - x1)
    return [(x1, 1.0 - w), (x2, w)]


def grid_axes(points: dict[tuple[int, int], dict]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The (at most two) depths and lengths of a grid of traces keyed by `(depth, length)`.

    Raises:
        `ValueError`: When the keys are not a full grid of one or two depths by one or two lengths.
    """
    depths = tuple(sorted({d for d, _ in points}))
    lengths = tuple(sorted({n for _, n in points}))
    if len(depths) > 2 or len(lengths) > 2 or {(d, n) for d in depths for n in lengths} != set(points):
        raise ValueError(f"need a full grid of 1-2 depths x 1-2 lengths, got points {sorted(points)}")
    return depths, lengths


def extrapolate_grid(points: dict[tuple[int, int], dict], depth: int, length: int) -> dict:
    """Bilinear extrapolation of traces on a `(depth, length)` grid to `(depth, length)`.

    Args:
        points (`dict[tuple[int, int], dict]`): `(depth, length)` -> `LiveBytesTracer.result()`, a full grid of one or
            two depths by one or two lengths (one value on an axis: that axis is not extrapolated).
        depth (`int`): decoder layers to extrapolate to.
        length (`int`): sequence length (the recipe's length key) to extrapolate to.

    Returns:
        `dict`: the shape of `LiveBytesTracer.result()` (`peak_bytes`, `phase`, `by_category`, `phases`), at
        `(depth, length)`; phases missing from any point are left out.
    """
    depths, lengths = grid_axes(points)
    weights = [((d, n), wd * wn) for d, wd in _weights(depths, depth) for n, wn in _weights(lengths, length)]

    def combine(values: list[float]) -> int:
        return int(round(sum(w * v for (_, w), v in zip(weights, values, strict=True))))

    common = set.intersection(*(set(r["phases"]) for r in points.values()))
    phases = {}
    for p in common:
        entries = [points[key]["phases"][p] for key, _ in weights]
        cats = sorted({c for e in entries for c in e["by_category"]})
        phases[p] = {
            "peak_bytes": combine([e["peak_bytes"] for e in entries]),
            "by_category": {c: combine([e["by_category"].get(c, 0) for e in entries]) for c in cats},
        }
    phase = max(phases, key=lambda p: phases[p]["peak_bytes"])
    return {
        "peak_bytes": phases[phase]["peak_bytes"],
        "phase": phase,
        "by_category": phases[phase]["by_category"],
        "phases": phases,
    }


def extrapolate_depth(points: dict[int, dict], num_layers: int) -> dict:
    """Linear extrapolation in depth of two traces (same settings, depths d1 < d2) to `num_layers`.

    Every phase's peak and every category scale as `v(L) = v(d1) + (L - d1) * (v(d2) - v(d1)) / (d2 - d1)`:
    per-layer tensors (4-bit weights, adapters, saved activations, KV cache) grow with depth; the rest does not.

    Args:
        points (`dict[int, dict]`): depth -> `LiveBytesTracer.result()`.
        num_layers (`int`): the depth to extrapolate to.

    Returns:
        `dict`: the same shape as `LiveBytesTracer.result()`, for `num_layers`.
    """
    two = dict(sorted(points.items())[:2])
    return extrapolate_grid({(d, 0): r for d, r in two.items()}, num_layers, 0)


def bilinear_coefficients(values: dict[tuple[int, int], float]) -> dict[str, float]:
    """`a, b, c, e` of `v(d, L) = a + b*d + c*L + e*d*L` through a 2 x 2 grid of values (bytes).

    `e` is the bytes per layer per token (saved activations), `c` per token outside the layers, `b` per layer.
    """
    (d1, d2), (n1, n2) = grid_axes(values)
    v11, v12, v21, v22 = values[d1, n1], values[d1, n2], values[d2, n1], values[d2, n2]
    e = (v22 - v21 - v12 + v11) / ((d2 - d1) * (n2 - n1))
    b = (v21 - v11) / (d2 - d1) - e * n1
    c = (v12 - v11) / (n2 - n1) - e * d1
    a = v11 - b * d1 - c * n1 - e * d1 * n1
    return {"a": a, "b": b, "c": c, "e": e}
