"""``HookedModel``: a language model from the Rust core with TransformerLens-style hooks."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from . import _native
from .backend import enable_default_blas
from .errors import InvalidArgumentError
from .hooks import ActivationCache, InterventionSpec, NamesSpec, PositionsSpec, names_request
from .progress import native_progress
from .registry import resolve_model_paths

Prompts = Union[str, Sequence[str], Sequence[Sequence[int]]]


@dataclass
class Generation:
    """A generated continuation: ``text`` (without the prompt), new ``token_ids``, and the
    model's log-probability of each new token (``logprobs``, temperature 1). ``cache``: the
    hooks asked for with ``names=``, each ``[1, pos, ...]`` over every position that was run
    (the prompt, then each new token but the last); None when none were asked for."""

    prompt: str
    text: str
    token_ids: list[int]
    logprobs: list[float]
    prompt_ids: list[int]
    cache: ActivationCache | None = None


@dataclass
class Gradients:
    """What ``HookedModel.gradients`` returns: ``grads[name]`` (the activation's shape, batch
    first), ``metric`` ``[batch]``, ``activations[name]`` (when asked for), token ids."""

    grads: dict[str, np.ndarray]
    metric: np.ndarray
    activations: dict[str, np.ndarray]
    tokens: list[list[int]]


class HookedModel:
    """A transformer running in the Rust core, with a hook at every layer.

    Hook names follow TransformerLens: ``hook_embed``, ``blocks.{i}.hook_resid_pre``,
    ``blocks.{i}.attn.hook_q|hook_k|hook_v`` ``[batch, pos, head, d_head]``,
    ``blocks.{i}.attn.hook_pattern`` ``[batch, head, q_pos, k_pos]``, ``blocks.{i}.hook_attn_out``,
    ``blocks.{i}.hook_resid_mid``, ``blocks.{i}.mlp.hook_post`` ``[batch, pos, d_mlp]``,
    ``blocks.{i}.hook_mlp_out``, ``blocks.{i}.hook_resid_post`` and ``ln_final.hook_normalized``
    (the final norm's output, i.e. the LM head's input), all ``[batch, pos, d_model]`` unless noted.
    ``hook_q`` / ``hook_k`` are before RoPE, in the Hugging Face head layout.
    """

    def __init__(self, native: Any, name: str, weight_files: Sequence[os.PathLike[str] | str] = ()):
        self._native = native
        self.name = name
        self._weight_files = [os.fspath(p) for p in weight_files] or [native.source]
        self.is_encoder: bool = bool(native.is_encoder)
        self.cfg: dict[str, Any] = dict(native.config())
        self.n_layers: int = self.cfg["n_layers"]
        self.d_model: int = self.cfg["d_model"]
        self._hook_names: list[str] = list(native.hook_names())

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"HookedModel('{self.name}', {c['architecture']}, layers={c['n_layers']}, "
            f"d_model={c['d_model']}, heads={c['n_heads']}/{c['n_kv_heads']} kv, vocab={c['vocab_size']})"
        )

    # --- tokens -------------------------------------------------------------------------
    def hook_names(self) -> list[str]:
        """Every hook point of the model, in forward order."""
        return list(self._hook_names)

    def to_tokens(self, text: str) -> list[int]:
        """Token ids of ``text`` (BOS prepended if the model's tokenizer adds one)."""
        return list(self._native.tokenize(text)[0])

    def to_str_tokens(self, text: str | Sequence[int]) -> list[str]:
        """Each token's text (``" capital"``) for a string or a list of ids."""
        ids = self.to_tokens(text) if isinstance(text, str) else [int(i) for i in text]
        return list(self._native.token_texts(ids))

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and each token's character span ``(start, end)`` in ``text``."""
        ids, offsets = self._native.tokenize(text)
        return list(ids), [tuple(o) for o in offsets]

    def decode(self, ids: Sequence[int]) -> str:
        return self._native.decode([int(i) for i in ids])

    def token_id(self, text: str) -> int:
        """The id of a text that is exactly one token (e.g. ``" Paris"``)."""
        ids = self.to_tokens(text)
        if self.cfg.get("add_bos") and ids and ids[0] == self.cfg.get("bos_token_id"):
            ids = ids[1:]
        if len(ids) != 1:
            raise InvalidArgumentError(f"{text!r} is {len(ids)} tokens, not one: {self.to_str_tokens(ids)}")
        return ids[0]

    # --- forward ------------------------------------------------------------------------
    def run_with_cache(
        self,
        prompts: Prompts,
        names: NamesSpec = None,
        positions: PositionsSpec = "all",
        stop_at_layer: int | None = None,
        return_logits: bool | str = True,
        interventions: Iterable[InterventionSpec] | None = None,
        batch_size: int = 32,
        progress: bool | None = None,
    ) -> tuple[np.ndarray | None, ActivationCache]:
        """Run prompts and capture activations.

        Args:
            prompts: a string, a list of strings, or a list of token-id lists.
            names: hook names, a glob (``"blocks.*.hook_resid_post"``), a predicate on names,
                or ``None`` for every hook.
            positions: ``"all"``, ``"last"`` (last real token of each prompt), an index or a
                list of indices (negative counts from each prompt's end), or ``PerPrompt([...])``.
            stop_at_layer: ``k`` runs blocks ``0`` to ``k - 1`` and stops before block ``k``
                (TransformerLens's meaning; ``0`` runs the embeddings only); no logits then. A
                glob in ``names`` keeps the hooks that are computed (``"blocks.*.hook_resid_post"``
                with ``stop_at_layer=3`` gives blocks 0, 1, 2); a hook named exactly that is not
                computed is an error.
            return_logits: ``True`` (``"last"`` when ``positions`` is ``"last"``, else ``"all"``),
                ``False``, ``"last"`` ``[batch, vocab]`` or ``"all"`` ``[batch, pos, vocab]``.
                Without logits, layers after the last captured one are not computed.
            interventions: ``(name, action)`` pairs or :class:`Intervention` objects.
            batch_size: prompts in memory at once (bounds peak memory). With several threads
                (``RAYON_NUM_THREADS``) they run as one chunk per core, each core a forward of
                its own; interventions with a callable or a batch mean run one batch at a time.
            progress: a bar with prompts/s and ETA, updated by the core every batch (None: when
                stderr is a terminal or in Jupyter; False: never; True: always).

        Returns:
            ``(logits or None, cache)``; ``cache[name]`` is a float32 numpy array.
        """
        # The request is read and validated once, in Rust (src/bindings/requests.rs).
        request = {
            "prompts": prompts,
            "names": names_request(names, self._hook_names),
            "positions": positions,
            "stop_at_layer": stop_at_layer,
            "logits": return_logits,
            "interventions": list(interventions) if interventions is not None else None,
            "batch_size": batch_size,
        }
        with native_progress(progress, "prompts", "run") as report:
            logits, entries, tokens = self._native.run(request, report)
        return logits, ActivationCache(dict(entries), [list(t) for t in tokens], positions,
                                       token_texts=self._native.token_texts)

    def run(
        self,
        prompts: Prompts,
        return_logits: str = "all",
        interventions: Iterable[InterventionSpec] | None = None,
        batch_size: int = 32,
        progress: bool | None = None,
    ) -> np.ndarray:
        """Logits only: ``"all"`` ``[batch, pos, vocab]`` (padded positions are zero) or
        ``"last"`` ``[batch, vocab]``. ``progress`` as in :meth:`run_with_cache`."""
        logits, _ = self.run_with_cache(
            prompts, names=[], positions="last", return_logits=return_logits,
            interventions=interventions, batch_size=batch_size, progress=progress,
        )
        assert logits is not None
        return logits

    def gradients(
        self,
        prompts: Prompts | None,
        metric: tuple,
        names: NamesSpec = "blocks.*.hook_resid_pre",
        position: int | None = None,
        interventions: Iterable[InterventionSpec] | None = None,
        batch_size: int = 8,
        return_activations: bool = False,
        embeddings: np.ndarray | None = None,
        progress: bool | None = None,
    ) -> Gradients:
        """``d metric / d activation`` at hook sites (no weight gradients), through the same
        forward as ``run_with_cache`` (interventions included: a replaced activation passes no
        gradient, a steering vector is a constant).

        Args:
            prompts: a string, a list of strings, or a list of token-id lists (right-padded
                to the longest); ``None`` when ``embeddings`` are given.
            metric: ``("logprob", target)``, ``("logit_diff", a, b)`` or ``("logits_dot",
                weights [vocab])``; targets are one-token strings or ids.
            names: hook names or globs whose gradients are returned.
            position: the position the metric reads (default: each prompt's last token).
            interventions: as in ``run_with_cache`` (no callables, no batch means).
            batch_size: prompts per chunk (long prompts run fewer at a time).
            return_activations: also return the activations at the sites.
            embeddings: ``[batch, pos, d_model]`` token embeddings (the ``hook_embed`` site)
                fed instead of prompts.
            progress: a bar counting block passes (forward and backward) of the prompts; as
                in :meth:`run_with_cache`.

        Returns:
            :class:`Gradients`: ``.grads[name]`` with the activation's shape (batch first,
            padded positions zero), ``.metric`` ``[batch]``, ``.activations`` (if asked).

        Memory: a forward keeps each block's input (``(n_layers + 1) * batch * pos * d_model``
        floats), then recomputes one block at a time with its graph.
        """
        from .metrics import resolve_metric

        spec = resolve_metric(self, metric, position)
        request = {
            "prompts": prompts,
            "embeddings": None if embeddings is None else np.ascontiguousarray(embeddings, dtype=np.float32),
            "metric": json.dumps(spec),
            "names": names_request(names, self._hook_names),
            "interventions": list(interventions) if interventions is not None else None,
            "batch_size": batch_size,
            "return_activations": return_activations,
        }
        with native_progress(progress, "block passes", "gradients") as report:
            metric_val, grads, acts, tokens = self._native.gradients(request, report)
        return Gradients(
            grads=dict(grads),
            metric=np.asarray(metric_val, dtype=np.float32),
            activations=dict(acts),
            tokens=[list(t) for t in tokens],
        )

    def embed(self, sentences: str | Sequence[str] | Sequence[Sequence[int]], batch_size: int = 32,
              progress: bool | None = None) -> np.ndarray:
        """Sentence embeddings of an encoder, as sentence-transformers computes them: the mean
        of the last hidden state over each sentence's real tokens, L2-normalised.
        ``progress`` as in :meth:`run_with_cache`.

        Returns ``[n_sentences, d_model]`` float32 (unit rows).
        """
        with native_progress(progress, "sentences", "embed") as report:
            return self._native.embed({"prompts": sentences, "batch_size": batch_size}, report)

    def __call__(self, prompts: Prompts, **kwargs: Any) -> np.ndarray:
        return self.run(prompts, **kwargs)

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 20,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        stop_at_eos: bool = True,
        interventions: Iterable[InterventionSpec] | None = None,
        return_details: bool = False,
        names: NamesSpec = None,
    ) -> str | Generation:
        """Continue ``prompt`` with a KV cache. ``temperature=0`` is greedy; otherwise sampling
        with optional top-k / top-p, reproducible for a ``seed``. Returns the continuation's text,
        or a :class:`Generation` with token ids and log-probs if ``return_details``.

        ``names`` (hook names, globs or a predicate; not attention patterns, whose key axis
        grows each step): keep those activations at every step, in the core, as
        ``Generation.cache`` (implies ``return_details``): ``cache[name]`` is
        ``[1, len(prompt_ids) + len(token_ids) - 1, ...]``."""
        request = {
            "prompt": prompt, "max_new_tokens": max_new_tokens, "temperature": temperature,
            "top_k": top_k, "top_p": top_p, "seed": seed, "stop_at_eos": stop_at_eos,
            "interventions": list(interventions) if interventions is not None else None,
        }
        if names is not None:
            request["names"] = names_request(names, self._hook_names)
        out = self._native.generate(request)
        gen = Generation(prompt, out["text"], list(out["token_ids"]), list(out["logprobs"]), list(out["prompt_ids"]))
        if names is None:
            return gen if return_details else gen.text
        run = list(gen.prompt_ids) + list(gen.token_ids[:-1])
        gen.cache = ActivationCache(dict(out["cache"]), [run], "all", token_texts=self._native.token_texts)
        return gen

    def check_layers(self, layers: Iterable[int] | None) -> list[int]:
        """Validate block indices (negative counts from the end); ``None`` means every block."""
        if layers is None:
            return list(range(self.n_layers))
        out = []
        for layer in layers:
            i = int(layer)
            if not -self.n_layers <= i < self.n_layers:
                raise InvalidArgumentError(
                    f"layer {layer} is out of range: this model has blocks 0..{self.n_layers - 1}")
            out.append(i % self.n_layers)
        if not out:
            raise InvalidArgumentError("the list of layers is empty")
        return out

    def layer_activations(
        self,
        prompts: Prompts,
        layers: Iterable[int] | None = None,
        positions: PositionsSpec = "last",
        site: str = "hook_resid_post",
        batch_size: int = 32,
        progress: bool | None = None,
    ) -> np.ndarray:
        """One site of several blocks as one array ``[layers, batch, d]`` (``positions`` must pick
        one position per prompt: ``"last"``, an index or ``PerPrompt``). Blocks after the last
        requested one are not computed. ``progress`` as in :meth:`run_with_cache`."""
        chosen = self.check_layers(layers)
        names = [f"blocks.{i}.{site}" for i in chosen]
        unknown = [n for n in names if n not in self._hook_names]
        if unknown:
            raise InvalidArgumentError(f"site '{site}' is not a per-block hook (e.g. hook_resid_post, hook_attn_out)")
        _, cache = self.run_with_cache(prompts, names=names, positions=positions,
                                       return_logits=False, batch_size=batch_size, progress=progress)
        arrays = [cache[n] for n in names]
        if arrays[0].ndim != 2:
            raise InvalidArgumentError("layer_activations needs one position per prompt; got "
                                       f"arrays of shape {arrays[0].shape}")
        return np.stack(arrays)

    def dump(self, texts: Any, path: str | os.PathLike[str], names: NamesSpec = "blocks.*.hook_resid_post",
             positions: str = "last", dtype: str = "float16", **kwargs: Any) -> Any:
        """Stream activations over a corpus to an Arrow dump; see :func:`mindscope.storage.dump`."""
        from .storage import dump

        return dump(self, texts, path, names=names, positions=positions, dtype=dtype, **kwargs)

    def weight_bytes(self) -> int:
        """Bytes of the weights in memory (quantized matrices as stored, the rest float32; a
        tied LM head counted once)."""
        return int(self._native.weight_bytes())

    @property
    def weights(self) -> str:
        """How the weight matrices are held: ``"quantized"`` (some kept in GGUF blocks as
        stored) or ``"float32"``; see :func:`load_model`."""
        return str(self._native.weights)

    def matrix_types(self) -> dict[str, int]:
        """Weight matrices per type held, e.g. ``{"f32": 0, "q4_1": 210, "q8_0": 1}`` minus the
        zero counts: the embedding, every projection and an untied LM head."""
        return {name: int(n) for name, n in self._native.matrix_types()}

    def weights_sha256(self) -> str:
        """SHA-256 of the weights (computed once): the GGUF file (its parts concatenated), or
        a folder's files in name order."""
        if not hasattr(self, "_sha256"):
            import hashlib
            from pathlib import Path

            files: list[Path] = []
            for p in map(Path, self._weight_files):
                files.extend(sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p])
            h = hashlib.sha256()
            for path in files:
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 22), b""):
                        h.update(chunk)
            self._sha256 = h.hexdigest()
        return self._sha256

    def ablation_scores(
        self,
        prompt_ids: Sequence[int],
        target_ids: Sequence[int],
        spans: Sequence[tuple[int, int]],
        ablation: str = "delete",
        replace_id: int | None = None,
        batch_size: int = 64,
        rows_per_batch: int = 2048,
        naive: bool = False,
        progress: bool | None = None,
    ) -> tuple[float, list[float]]:
        """Log-probability of ``target_ids`` after ``prompt_ids`` (summed over target tokens),
        clean and with each token span ``(start, end)`` ablated: ``"delete"``, ``"replace"``
        (with ``replace_id``), ``"zero"`` or ``"mean"`` (the token embeddings). Variants share
        the clean prefix and run packed (at most ``batch_size`` variants and about
        ``rows_per_batch`` recomputed positions per run); ``naive=True`` runs one full forward
        per variant instead (the reference the fast path is tested against). ``progress``: a
        bar counting scored sequences (the clean one and each variant), as in
        :meth:`run_with_cache`.

        Returns ``(clean, [ablated per span])``.
        """
        request = {
            "prompt_ids": prompt_ids, "target_ids": target_ids, "spans": spans, "ablation": ablation,
            "replace_id": replace_id, "batch_size": batch_size, "rows_per_batch": rows_per_batch,
            "naive": naive,
        }
        with native_progress(progress, "variants", "attribution") as report:
            return self._native.ablation_scores(request, report)

    def resolve_hooks(self, names: NamesSpec) -> list[str]:
        """The hook names that ``names`` selects (names, globs such as
        ``"blocks.[0-3].hook_resid_post"``, a predicate, or ``None`` for all), in forward order:
        the same matcher every call uses."""
        chosen = names_request(names, self._hook_names)
        if chosen is None:
            return list(self._hook_names)
        return list(self._native.resolve_hooks([chosen] if isinstance(chosen, str) else list(chosen)))

    # --- weights ------------------------------------------------------------------------
    def unembed(self, resid: np.ndarray) -> np.ndarray:
        """Final norm + unembedding: residual vectors ``[..., d_model]`` -> logits ``[..., vocab]``."""
        resid = np.asarray(resid, dtype=np.float32)
        lead = resid.shape[:-1]
        flat = np.ascontiguousarray(resid.reshape(-1, resid.shape[-1]))
        return self._native.unembed(flat).reshape(*lead, -1)

    def embedding_matrix(self) -> np.ndarray:
        """The token embedding matrix ``[vocab, d_model]`` (a copy)."""
        return self._native.embedding_matrix()


WEIGHTS_MODES = ("quantized", "float32")


def check_weights_mode(weights: object) -> None:
    """Raise :class:`InvalidArgumentError` unless ``weights`` is one of :data:`WEIGHTS_MODES`
    or None (a str subclass equal to one counts; ``3``, ``b"float32"``, ``True`` do not)."""
    if weights is not None and not (isinstance(weights, str) and weights in WEIGHTS_MODES):
        raise InvalidArgumentError(f"weights={weights!r} is not a weights mode; use one of "
                                   f"{', '.join(map(repr, WEIGHTS_MODES))} or None")


def load_model(name_or_path: str | os.PathLike[str] = "smollm2-135m", revision: str | None = None,
               progress: bool | None = None, weights: str | None = None) -> HookedModel:
    """Load a model: a short name (``"smollm2-135m"``, ``"gemma3-270m"``, ``"minilm-l6"``; see
    ``list_models()``), a GGUF file, a Hugging Face folder (config.json, *.safetensors,
    tokenizer.json), or a Hugging Face repository id found in the local Hub cache (``"gpt2"``,
    ``"EleutherAI/pythia-160m"``, ``"org/repo/file.gguf"``; ``revision`` picks a branch or
    commit). Nothing is downloaded. ``progress``: a bar counting the tensors read (None: when
    interactive and the load takes over half a second; False: never; True: always).

    ``weights``: how the weight matrices are held.

    - ``"quantized"``: a GGUF file's quantized matrices (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K to
      Q6_K) stay in their blocks as stored and are multiplied as such; memory is about the
      file's size. Activations, and every hook, stay float32.
    - ``"float32"``: every weight converted to float32 (4 bytes a parameter): the exact
      computation, the one checked against ``transformers``.
    - None (default): quantized when the file has quantized matrices, else float32.

    A model stored as floats (a Hugging Face folder) refuses ``"quantized"``."""
    check_weights_mode(weights)
    paths = resolve_model_paths(name_or_path, revision)
    enable_default_blas()
    with native_progress(progress, "tensors", "load") as report:
        if len(paths) == 1:
            native = _native.Model.load(str(paths[0]), weights, report)
        else:
            native = _native.Model.load_gguf_parts([str(p) for p in paths], weights, report)
    name = os.fspath(name_or_path) if not os.path.exists(os.fspath(name_or_path)) else native.name
    return HookedModel(native, name, paths)
