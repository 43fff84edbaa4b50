"""Width slicing of the split autoencoder (HeteroFL, Diao et al., arXiv 2010.01264; issue 22 baseline (b)).

A device class changes one width: the hidden width of every ``StackedLSTM`` (fedmekt/learn/model.py), the
``first`` LSTM's output and the ``second`` LSTM's input. A narrower model of width h is the slice of a wider one
that keeps the first h hidden units. PyTorch stacks an LSTM's four gates [i, f, g, o] along dim 0 of
``weight_ih``, ``weight_hh`` and both biases, each gate ``hidden`` rows, so the rows kept are the first h of
every gate; ``first.weight_hh`` also keeps its first h columns (its input is its own output) and
``second.weight_ih`` its first h columns (its input is the first LSTM's output). Every other dimension (input
channels, the representation size r, the second LSTM's own width) is the same in every class and never sliced.

A slice computes what the wide model computes (to float rounding) with the other units' rows zeroed: a unit
whose weights and biases are zero has c = 0.5 c' + 0.5 tanh(0) = 0 from c₀ = 0, so its output is 0 and the kept
units see no difference.
"""

from __future__ import annotations

import numpy as np

GATES = 4  # PyTorch LSTM: [i, f, g, o] stacked along dim 0


def _layout(key: str) -> tuple[bool, bool]:
    """(dim 0 is the four gates of the hidden width, dim 1 is the hidden width) for a state_dict ``key``."""
    layer, name = key.split(".")[-2:]
    if layer == "first":
        return True, name.startswith("weight_hh")
    if layer == "second":
        return False, name.startswith("weight_ih")
    return False, False


def shape_at(key: str, shape: tuple[int, ...], hidden: int) -> tuple[int, ...]:
    """The shape ``key``'s parameter (``shape`` at any width) has in a model of hidden width ``hidden``."""
    gated, cols = _layout(key)
    out = list(shape)
    if gated:
        out[0] = GATES * hidden
    if cols:
        out[1] = hidden
    return tuple(out)


def width_of(tensors: dict[str, np.ndarray]) -> int:
    """The hidden width of the parameters ``tensors`` (``param/<key>`` or ``<key>``) hold: a first LSTM's
    ``weight_hh`` is [4h, h]. ValueError when they hold none."""
    for k in sorted(tensors):
        if k.endswith(".first.weight_hh_l0"):
            return int(np.shape(tensors[k])[1])
    raise ValueError("no LSTM weight_hh among the parameters: their width is unknown")


def index(key: str, shape: tuple[int, ...], hidden: int) -> tuple[np.ndarray, ...]:
    """Open-mesh indices (``np.ix_``) of the elements of ``key``'s wide parameter of ``shape`` that a model of
    width ``hidden`` holds: ``wide[index]`` is the slice, ``wide[index] = narrow`` writes one back."""
    gated, cols = _layout(key)
    axes = [np.arange(n) for n in shape]
    if gated:
        wide = shape[0] // GATES
        axes[0] = np.concatenate([np.arange(g * wide, g * wide + hidden) for g in range(GATES)])
    if cols:
        axes[1] = np.arange(hidden)
    return np.ix_(*axes)


def sliced(key: str, wide: np.ndarray, hidden: int) -> np.ndarray:
    """The part of ``key``'s wide parameter a model of width ``hidden`` holds (a contiguous copy); ValueError when
    the parameter is narrower than that."""
    try:
        return np.ascontiguousarray(wide[index(key, tuple(wide.shape), hidden)])
    except IndexError:
        raise ValueError(f"{key}: {tuple(wide.shape)} has no width-{hidden} slice") from None


def sliced_state(wide: dict[str, np.ndarray], hidden: int) -> dict[str, np.ndarray]:
    """Every parameter of a wide model's state sliced to width ``hidden``."""
    return {k: sliced(k, v, hidden) for k, v in wide.items()}
