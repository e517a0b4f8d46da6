"""Capture specs and interventions on the Python side: normalise what users write into the
plain tuples the native module takes."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from .errors import InvalidArgumentError, ShapeError

NamesSpec = Union[None, str, Sequence[str], Callable[[str], bool]]


@dataclass(frozen=True)
class PerPrompt:
    """One position index per prompt (negative counts from each prompt's end)."""

    indices: Sequence[int]


PositionsSpec = Union[str, int, Sequence[int], PerPrompt]


def resolve_names(names: NamesSpec, hook_names: Sequence[str]) -> list[str]:
    """Hook names (or globs the core expands) selected by a list, a glob, or a predicate."""
    if names is None:
        return list(hook_names)
    if isinstance(names, str):
        return [names]
    if callable(names):
        chosen = [n for n in hook_names if names(n)]
        if not chosen:
            raise InvalidArgumentError("the names predicate selected no hook point")
        return chosen
    out = list(names)
    if not all(isinstance(n, str) for n in out):
        raise InvalidArgumentError("names must be strings (hook names or globs)")
    return out


def positions_args(positions: PositionsSpec) -> tuple[str, list[int]]:
    """Native (kind, values) for a positions spec."""
    if isinstance(positions, PerPrompt):
        return "per_prompt", [int(i) for i in positions.indices]
    if isinstance(positions, str):
        if positions not in ("all", "last"):
            raise InvalidArgumentError(
                f"positions='{positions}' is not allowed; use 'all', 'last', an index, "
                "a list of indices, or PerPrompt([...])"
            )
        return positions, []
    if isinstance(positions, (int, np.integer)):
        return "indices", [int(positions)]
    try:
        values = [int(i) for i in positions]
    except TypeError as exc:
        raise InvalidArgumentError(f"positions must be 'all', 'last', an int or a list of ints, got {positions!r}") from exc
    return "indices", values


@dataclass
class Intervention:
    """Change an activation during the forward pass.

    ``action`` is ``"zero"``, ``"replace"`` / ``"patch"`` (``value`` is the new activation: the
    full ``[batch, pos, ...]`` array, or the shape the ``positions`` select), ``"add"``
    (``value`` is a vector with the hook's trailing shape, e.g. ``[d_model]``, times
    ``scale``: steering), ``"mean"`` (``value`` is a mean vector, or ``None`` for the mean over
    the batch's real tokens) or ``"call"`` (``fn(activation, hook_name)`` returns a new array or
    modifies it in place and returns ``None``). ``positions`` restricts it (default: all).
    """

    hook: str
    action: str
    value: np.ndarray | None = None
    scale: float = 1.0
    positions: PositionsSpec | None = None
    fn: Callable[[np.ndarray, str], np.ndarray | None] | None = field(default=None, repr=False)


InterventionSpec = Union[Intervention, tuple]


def _from_tuple(item: tuple) -> Intervention:
    if len(item) < 2 or not isinstance(item[0], str):
        raise InvalidArgumentError(
            f"an intervention is (hook_name, action), got {item!r}"
        )
    hook, action, *rest = item
    if callable(action):
        return Intervention(hook, "call", fn=action)
    if isinstance(action, str):
        if action == "zero":
            return Intervention(hook, "zero")
        if action == "mean" and not rest:
            return Intervention(hook, "mean")
        raise InvalidArgumentError(
            f"intervention at '{hook}': action '{action}' needs a value: ('{hook}', ('{action}', value))"
        )
    if isinstance(action, tuple) and action and isinstance(action[0], str):
        kind, *args = action
        if kind in ("replace", "patch", "mean"):
            return Intervention(hook, kind, value=args[0] if args else None)
        if kind == "add":
            if not args:
                raise InvalidArgumentError(f"intervention at '{hook}': ('add', vector[, scale])")
            return Intervention(hook, "add", value=args[0], scale=float(args[1]) if len(args) > 1 else 1.0)
        if kind == "zero":
            return Intervention(hook, "zero")
    raise InvalidArgumentError(
        f"intervention at '{hook}': unknown action {action!r}; allowed: 'zero', ('replace', array), "
        "('patch', array), ('add', vector, scale), ('mean', vector or None), or a callable"
    )


def intervention_args(
    interventions: Iterable[InterventionSpec] | None, hook_names: Sequence[str]
) -> list[tuple[Any, ...]]:
    """Native tuples ``(name, action, array, scale, pos_kind, pos_values, fn)``; globs expand."""
    out: list[tuple[Any, ...]] = []
    for item in interventions or []:
        iv = item if isinstance(item, Intervention) else _from_tuple(tuple(item))
        if any(ch in iv.hook for ch in "*?"):
            targets = [n for n in hook_names if fnmatch.fnmatchcase(n, iv.hook)]
            if not targets:
                raise InvalidArgumentError(f"intervention pattern '{iv.hook}' matches no hook")
        else:
            targets = [iv.hook]
        value = None
        if iv.value is not None:
            value = np.ascontiguousarray(np.asarray(iv.value, dtype=np.float32))
            if not np.all(np.isfinite(value)):
                raise InvalidArgumentError(f"intervention at '{iv.hook}': value contains NaN or inf")
        if iv.action == "call" and not callable(iv.fn):
            raise InvalidArgumentError(f"intervention at '{iv.hook}': action 'call' needs fn")
        pos_kind, pos_values = (None, []) if iv.positions is None else positions_args(iv.positions)
        for name in targets:
            out.append((name, iv.action, value, float(iv.scale), pos_kind, pos_values, iv.fn))
    return out


class ActivationCache(Mapping[str, np.ndarray]):
    """Captured activations by hook name (numpy float32 arrays), in forward order.

    Shapes, for ``positions="all"``: residual-stream hooks ``[batch, pos, d_model]`` (padded
    positions are zero; ``lengths`` gives each prompt's real length), ``attn.hook_q|k|v``
    ``[batch, pos, head, d_head]``, ``attn.hook_pattern`` ``[batch, head, q_pos, k_pos]``,
    ``mlp.hook_post`` ``[batch, pos, d_mlp]``. ``positions="last"`` (or ``PerPrompt``) drops the
    position axis; a list of indices keeps it with one entry per index.
    """

    def __init__(self, arrays: dict[str, np.ndarray], tokens: list[list[int]], positions: PositionsSpec):
        self._arrays = arrays
        self.tokens = tokens
        self.lengths = np.array([len(t) for t in tokens], dtype=np.int64)
        self.positions = positions

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._arrays[name]
        except KeyError:
            close = fnmatch.filter(self._arrays, f"*{name.split('.')[-1]}*")[:5]
            raise KeyError(
                f"'{name}' was not captured; captured: {len(self._arrays)} names"
                + (f", e.g. {', '.join(close)}" if close else "")
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def stack(self, kind: str = "hook_resid_post") -> np.ndarray:
        """Stack one kind over layers: ``[n_layers, ...]`` (e.g. ``[layers, batch, d_model]``)."""
        names = [n for n in self._arrays if n.startswith("blocks.") and n.endswith("." + kind)]
        if not names:
            raise KeyError(f"no captured 'blocks.*.{kind}' in the cache")
        names.sort(key=lambda n: int(n.split(".")[1]))
        return np.stack([self._arrays[n] for n in names])

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in list(self._arrays.items())[:4])
        more = "" if len(self) <= 4 else f", ... ({len(self)} arrays)"
        return f"ActivationCache({shapes}{more})"
