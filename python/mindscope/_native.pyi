"""Type stubs of the native module ``mindscope._native`` (the Rust core).

Users call the wrappers in ``mindscope`` (``load_model``, ``HookedModel``); these are the
functions those wrappers call. Every array is float32 and C-contiguous, handed over without a copy.
"""

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

F32 = npt.NDArray[np.float32]

# (hook name, action, array, scale, positions kind, positions values, callable)
NativeIntervention = tuple[
    str, str, F32 | None, float, str | None, Sequence[int], Callable[[F32, str], F32 | None] | None
]

class Model:
    """A model in the Rust core (weights dequantized to f32, hook registry, tokenizer)."""

    @staticmethod
    def load(path: str) -> Model:
        """Load a GGUF file. Raises ModelFormatError, UnsupportedArchitectureError, StorageError."""
    @property
    def name(self) -> str: ...
    @property
    def source(self) -> str: ...
    def config(self) -> dict[str, Any]:
        """architecture, n_layers, d_model, n_heads, n_kv_heads, d_head, d_mlp, vocab_size,
        context_length, rope_theta, norm_eps, tie_embeddings, bos/eos/pad_token_id, add_bos."""
    def hook_names(self) -> list[str]:
        """Every hook point, in forward order."""
    def tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids ``[n_tokens]`` and character spans ``[(start, end)] * n_tokens``."""
    def decode(self, ids: Sequence[int]) -> str: ...
    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """The text of each token on its own."""
    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary entry (e.g. ``"Ġcapital"``)."""
    def run(
        self,
        texts: Sequence[str] | None,
        token_ids: Sequence[Sequence[int]] | None,
        names: Sequence[str],
        positions_kind: str,
        positions_values: Sequence[int],
        stop_at_layer: int | None,
        logits: str,
        interventions: Sequence[NativeIntervention],
        batch_size: int,
    ) -> tuple[F32 | None, list[tuple[str, F32]], list[list[int]]]:
        """Run prompts; returns (logits ``[batch, vocab]`` or ``[batch, pos, vocab]`` or None,
        captured arrays by hook name in forward order, token ids per prompt).

        ``positions_kind``: ``"all"`` (arrays ``[batch, pos, ...]``), ``"last"`` (``[batch, ...]``),
        ``"indices"`` (``[batch, len(values), ...]``), ``"per_prompt"`` (``[batch, ...]``).
        ``logits``: ``"none"``, ``"last"`` or ``"all"``. The GIL is released while it runs."""
    def generate(
        self,
        prompt: str,
        max_new_tokens: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        seed: int,
        stop_at_eos: bool,
        interventions: Sequence[NativeIntervention],
    ) -> dict[str, Any]:
        """``{"text": str, "token_ids": [n_new], "logprobs": [n_new], "prompt_ids": [n_prompt]}``."""
    def unembed(self, resid: F32) -> F32:
        """Final norm + LM head: ``[n, d_model]`` -> logits ``[n, vocab]``."""
    def embedding_matrix(self) -> F32:
        """Token embeddings ``[vocab, d_model]`` (a copy)."""

def supported_architectures() -> list[str]:
    """Architectures with a forward pass (GGUF ``general.architecture`` values)."""
