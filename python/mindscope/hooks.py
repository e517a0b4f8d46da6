"""Capture specs and interventions as users write them, and the activation cache that comes
back. The core reads these objects itself (``src/bindings/requests.rs``); nothing here
validates them."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

import numpy as np

from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from .views import View

NamesSpec = Union[None, str, Sequence[str], Callable[[str], bool]]


@dataclass(frozen=True)
class PerPrompt:
    """One position index per prompt (negative counts from each prompt's end)."""

    indices: Sequence[int]


PositionsSpec = Union[str, int, Sequence[int], PerPrompt]


def names_request(names: NamesSpec, hook_names: Sequence[str]) -> str | list[str] | None:
    """``names`` as the core takes it: a predicate (Python code) is applied here; names and
    globs go to the core's one matcher unchanged."""
    if callable(names) and not isinstance(names, str):
        chosen = [n for n in hook_names if names(n)]
        if not chosen:
            raise InvalidArgumentError("the names predicate selected no hook point")
        return chosen
    return names  # type: ignore[return-value]


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
"""An :class:`Intervention`, or a tuple: ``(name, "zero")``, ``(name, "mean")``,
``(name, ("replace", array))``, ``(name, ("patch", array))``, ``(name, ("add", vector, scale))``,
``(name, ("mean", vector))`` or ``(name, fn)``. Names may be globs. The core reads either form."""


class ActivationCache(Mapping[str, np.ndarray]):
    """Captured activations by hook name (numpy float32 arrays), in forward order.

    Shapes, for ``positions="all"``: residual-stream hooks ``[batch, pos, d_model]`` (padded
    positions are zero; ``lengths`` gives each prompt's real length), ``attn.hook_q|k|v``
    ``[batch, pos, head, d_head]``, ``attn.hook_pattern`` ``[batch, head, q_pos, k_pos]``,
    ``mlp.hook_post`` ``[batch, pos, d_mlp]``. ``positions="last"`` (or ``PerPrompt``) drops the
    position axis; a list of indices keeps it with one entry per index.

    In Jupyter a cache shows itself as an interactive attention view when it holds
    ``attn.hook_pattern`` at every position, else as a table of its arrays (``view()``,
    ``show()``, ``to_html(path)``).
    """

    def __init__(self, arrays: dict[str, np.ndarray], tokens: list[list[int]], positions: PositionsSpec,
                 token_texts: Callable[[list[int]], list[str]] | None = None):
        self._arrays = arrays
        self.tokens = tokens
        self.lengths = np.array([len(t) for t in tokens], dtype=np.int64)
        self.positions = positions
        # Token texts are looked up when a view asks (the model's tokenizer), not for every run.
        self._token_texts = token_texts
        self._str_tokens: list[list[str]] | None = None

    def str_tokens(self, prompt: int = 0) -> list[str]:
        """Each token's text for prompt ``prompt`` (``[lengths[prompt]]``); ``"#id"`` for a cache
        made without a tokenizer."""
        self._check_prompt(prompt)
        ids = self.tokens[prompt]
        if self._str_tokens is not None:
            return list(self._str_tokens[prompt])
        return list(self._token_texts(ids)) if self._token_texts is not None else [f"#{i}" for i in ids]

    def __getstate__(self) -> dict:
        # The tokenizer lives in the native model, which does not pickle: keep its texts instead.
        state = dict(self.__dict__)
        if self._token_texts is not None:
            state["_str_tokens"] = [self.str_tokens(i) for i in range(len(self.tokens))]
            state["_token_texts"] = None
        return state

    def _check_prompt(self, prompt: int) -> None:
        if isinstance(prompt, bool) or not isinstance(prompt, (int, np.integer)) or not 0 <= prompt < len(self.tokens):
            raise InvalidArgumentError(f"prompt must be an index in [0, {len(self.tokens)}), got {prompt!r}")

    def _pattern_names(self) -> list[str]:
        names = [n for n in self._arrays if re.fullmatch(r"blocks\.\d+\.attn\.hook_pattern", n)]
        return sorted(names, key=lambda n: int(n.split(".")[1]))

    def attention_view(self, prompt: int = 0, layers: Sequence[int] | None = None) -> View:
        """Attention patterns of one prompt, per layer and head: hover a token to see what it
        attends to. Needs ``blocks.*.attn.hook_pattern`` captured with ``positions="all"``;
        ``layers`` picks some of the captured layers (default: all)."""
        from .views import attention_view

        self._check_prompt(prompt)
        names = self._pattern_names()
        if not names:
            raise InvalidArgumentError('no attention pattern in this cache: capture names="blocks.*.attn.hook_pattern"')
        if not (isinstance(self.positions, str) and self.positions == "all"):
            raise InvalidArgumentError(f'the attention view needs every query position: capture with positions="all" '
                                       f"(this cache has positions={self.positions!r})")
        if layers is not None:
            by_layer = {int(n.split(".")[1]): n for n in names}
            missing = [i for i in layers if i not in by_layer]
            if missing:
                raise InvalidArgumentError(f"layers {missing} were not captured; captured: {sorted(by_layer)}")
            names = [by_layer[i] for i in layers]
        n = int(self.lengths[prompt])
        patterns = np.stack([self._arrays[name][prompt, :, :n, :n] for name in names])
        tokens = self.str_tokens(prompt)
        title = f"Attention, prompt {prompt} of {len(self.tokens)}: {''.join(tokens)!r}"
        return attention_view(tokens, patterns, [f"layer {name.split('.')[1]}" for name in names], title=title)

    def view(self) -> View:
        """The attention view of prompt 0 when attention patterns were captured at every
        position, else (or when that view would be too large) a table of the captured arrays."""
        from .views import table_view

        title = f"ActivationCache: {len(self)} arrays, {len(self.tokens)} prompts, positions={self.positions!r}"
        if self._pattern_names() and isinstance(self.positions, str) and self.positions == "all":
            try:
                return self.attention_view(0)
            except InvalidArgumentError as e:  # too many weights: Jupyter shows the table, not a traceback
                title += f" (no attention view: {e})"
        rows = [[name, " x ".join(map(str, a.shape)), str(a.dtype)] for name, a in self._arrays.items()]
        return table_view(["hook", "shape", "dtype"], rows, title=title)

    def _repr_html_(self) -> str:
        return self.view().html()

    def show(self) -> str | None:
        """Display :meth:`view` in Jupyter; elsewhere write it to a temporary HTML file and return its path."""
        return self.view().show()

    def to_html(self, path: str | os.PathLike[str]) -> str:
        """Save :meth:`view` as a self-contained HTML page; returns the path."""
        return self.view().to_html(path)

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
