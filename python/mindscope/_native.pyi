"""Type stubs of the native module ``mindscope._native`` (the Rust core).

Users call the wrappers in ``mindscope`` (``load_model``, ``HookedModel``); these are the
functions those wrappers call. Every array is float32 and C-contiguous, handed over without a copy.
"""

from collections.abc import Callable, Sequence
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

__version__: str

F32 = npt.NDArray[np.float32]

# Requests are dicts read and validated by the core (src/bindings/requests.rs); unknown keys
# and values of the wrong type raise InvalidArgumentError naming the key and what is allowed.
Prompts = str | Sequence[str] | Sequence[Sequence[int]]
Positions = str | int | Sequence[int] | Any  # "all" | "last" | index | indices | PerPrompt
# Called with (done, total) as a long call advances: by the thread that made the call, with the
# newest count at most every 50 ms and once at the end (done never decreases). Raising from it
# (e.g. KeyboardInterrupt) stops the work and the call raises that exception.
ProgressCallback = Callable[[int, int], None]

class RunRequest(TypedDict, total=False):
    prompts: Prompts
    names: str | Sequence[str] | None  # names or globs ("blocks.[0-3].hook_resid_post"); None: all
    positions: Positions
    stop_at_layer: int | None  # blocks 0..stop_at_layer-1 run
    logits: bool | str  # True (default for the positions), False, "none", "last", "all"
    interventions: Sequence[Any] | None  # Intervention objects or (hook, action) tuples
    batch_size: int

class GenerateRequest(TypedDict, total=False):
    prompt: str
    max_new_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int
    stop_at_eos: bool
    interventions: Sequence[Any] | None
    names: Sequence[str]

class EmbedRequest(TypedDict, total=False):
    prompts: Prompts
    batch_size: int

class AblationRequest(TypedDict, total=False):
    prompt_ids: Sequence[int]
    target_ids: Sequence[int]
    spans: Sequence[tuple[int, int]]
    ablation: str  # "delete" | "replace" | "zero" | "mean"
    replace_id: int | None
    batch_size: int
    rows_per_batch: int
    naive: bool

class GradientRequest(TypedDict, total=False):
    prompts: Prompts | None  # or embeddings
    embeddings: F32 | None  # [batch, pos, d_model] token embeddings (the hook_embed site)
    metric: str  # JSON: {"kind": "logprob"|"logit_diff"|"logits_dot", "target"|"a","b"|"weights", "position"}
    names: str | Sequence[str] | None
    interventions: Sequence[Any] | None  # no callables, no batch means
    batch_size: int  # 1..8
    return_activations: bool

class Model:
    """A model in the Rust core (weights as f32, hook registry, tokenizer)."""

    @staticmethod
    def load(path: str, weights: str | None = None, progress: ProgressCallback | None = None) -> Model:
        """Load a GGUF file or a Hugging Face folder (config.json, *.safetensors, tokenizer.json).
        ``weights``: "quantized" | "float32" | None (quantized when the file has quantized
        matrices). Raises ModelFormatError, UnsupportedArchitectureError, StorageError,
        InvalidArgumentError. ``progress(done, total)`` counts tensors read."""
    @staticmethod
    def load_gguf_parts(parts: Sequence[str], weights: str | None = None,
                        progress: ProgressCallback | None = None) -> Model:
        """Load a GGUF file stored as consecutive parts, read as their concatenation."""
    @property
    def weights(self) -> str:
        """"quantized" when any weight matrix is held in a quantized block type, else "float32"."""
    def matrix_types(self) -> list[tuple[str, int]]:
        """Weight matrices per type held: ``[(type, count)]`` ("f32", "q4_k", ...)."""
    @property
    def is_encoder(self) -> bool:
        """True for encoders (BERT): no logits, no generation, but ``embed``."""
    @property
    def name(self) -> str: ...
    @property
    def source(self) -> str: ...
    def config(self) -> dict[str, Any]:
        """architecture, family ("llama" | "gemma3" | "phi3" | "gpt2" | "gpt_neox" | "bert"),
        is_encoder, activation, norm ("rms" | "layer"), residual ("sequential" | "parallel" |
        "post_norm"), mlp ("gated" | "plain"), positions ("rope" | "learned"), n_layers, d_model,
        n_heads, n_kv_heads, d_head, d_mlp, vocab_size, context_length, rope_theta,
        rope_local_theta, rotary_dim, rope_scaling, sliding_window, sliding_layers
        ``[n_layers]``, attn_scale, norm_eps, tie_embeddings, bos/eos/pad_token_id, add_bos."""
    def hook_names(self) -> list[str]:
        """Every hook point, in forward order."""
    def weight_bytes(self) -> int:
        """Bytes of the weights held in memory (a tied head counted once)."""
    def resolve_hooks(self, patterns: Sequence[str]) -> list[str]:
        """The hook names matching names or globs, in forward order (UnknownHookError otherwise)."""
    def tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids ``[n_tokens]`` and character spans ``[(start, end)] * n_tokens``."""
    def decode(self, ids: Sequence[int]) -> str: ...
    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """The text of each token on its own."""
    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary entry (e.g. ``"Ġcapital"``)."""
    def run(self, request: RunRequest, progress: ProgressCallback | None = None
            ) -> tuple[F32 | None, list[tuple[str, F32]], list[list[int]]]:
        """Run prompts; returns (logits ``[batch, vocab]`` or ``[batch, pos, vocab]`` or None,
        captured arrays by hook name in forward order, token ids per prompt). Captures:
        ``positions="all"`` keeps ``[batch, pos, ...]``, ``"last"`` / PerPrompt drop the pos axis,
        indices keep one entry per index. The GIL is released while it runs. ``progress(done,
        total)`` counts prompts (see ``ProgressCallback``)."""
    def gradients(
        self, request: GradientRequest, progress: ProgressCallback | None = None
    ) -> tuple[list[float], list[tuple[str, F32]], list[tuple[str, F32]], list[list[int]]]:
        """``(metric per prompt, [(name, d metric / d activation)], [(name, activation)] (with
        return_activations), token ids)``; arrays have the activation's shape, batch first,
        padded positions zero. The GIL is released while it runs. ``progress(done, total)``
        counts block passes (a forward and a backward per block) of the prompts."""
    def embed(self, request: EmbedRequest, progress: ProgressCallback | None = None) -> F32:
        """Sentence embeddings ``[n, d_model]``: mean over real tokens of the last hidden state,
        L2-normalised. Encoders only. ``progress(done, total)`` counts sentences."""
    def generate(self, request: GenerateRequest) -> dict[str, Any]:
        """``{"text": str, "token_ids": [n_new], "logprobs": [n_new], "prompt_ids": [n_prompt],
        "cache": {name: [1, pos, ...]}}`` (the hooks of ``names``, every step's positions)."""
    def unembed(self, resid: F32) -> F32:
        """Final norm + LM head: ``[n, d_model]`` -> logits ``[n, vocab]``."""
    def embedding_matrix(self) -> F32:
        """Token embeddings ``[vocab, d_model]`` (a copy)."""
    def ablation_scores(self, request: AblationRequest, progress: ProgressCallback | None = None
                        ) -> tuple[float, list[float]]:
        """``(log p(target | prompt), [log p(target | prompt with span i ablated)])``, target
        log-probs summed over its tokens. Spans are token ranges ``[start, end)``. Variants run
        packed, at most ``batch_size`` variants and about ``rows_per_batch`` recomputed
        positions per packed run (when several runs are needed, one runs per core); ``naive``
        runs one full forward per variant instead (the reference). ``progress(done, total)``
        counts scored sequences: the clean one and each variant."""
    def activation_patching(self, request_json: str, progress: ProgressCallback | None = None) -> dict[str, Any]:
        """Activation patching. ``request_json``: JSON of ``{"clean_ids": [T], "corrupt_ids": [T],
        "metric": {"kind": ..., "position": ...}, "sites": ["resid_pre" | "attn_out" | "mlp_out" |
        "head"], "naive": bool, "rows_per_batch": int}``. Returns ``{"clean": float, "corrupt": float, "scores": {site:
        F32 [layer, position] or [layer, head]}}``: the corrupt run's metric with one clean
        activation patched in per cell; ``naive`` runs one full forward per patch instead.
        ``progress(done, total)`` counts patches."""

def use_blas(path: str) -> str:
    """Multiply with ``cblas_sgemm`` from the shared library at ``path`` (once per process);
    returns the library in use."""
def blas_library() -> str | None:
    """The BLAS library in use, or None for the built-in ``gemm`` kernels."""
def default_threads() -> int:
    """The threads rayon's pool takes without ``RAYON_NUM_THREADS``: the CPUs this process may
    use (affinity and cgroup quota included)."""
def supported_architectures() -> list[str]:
    """GGUF ``general.architecture`` values and Hugging Face ``model_type`` values with a mapping."""

F64 = npt.NDArray[np.float64]

# --- analysis (inputs are float64 [n_samples, n_features]; the GIL is released while fitting) ---

def ridge_fit(x: F64, y: F64, alphas: Sequence[float], cv: int, seed: int, standardize: bool) -> dict[str, Any]:
    """Ridge for ``y [n, k]``; alpha by leave-one-out (``cv=0``) or ``cv``-fold CV. Returns
    ``coef [d, k]``, ``intercept [k]``, ``alpha``, ``cv_errors [len(alphas)]``, ``mean``, ``scale``."""
def logistic_fit(x: F64, y: Sequence[int], n_classes: int, c: float, max_iter: int, tol: float,
                 standardize: bool, class_weight: Sequence[float] | None = None) -> dict[str, Any]:
    """Logistic regression (L-BFGS in the core), L2 ``1 / c``; labels ``0..n_classes``. Returns
    ``coef [d, 1 or n_classes]``, ``intercept``, ``mean``, ``scale``, ``n_iter``, ``converged``."""
def logistic_sweep(layers: Sequence[np.ndarray], targets: Sequence[tuple[Sequence[int], int, Sequence[float] | None]],
                   train: Sequence[int], test: Sequence[int], c: float, max_iter: int, tol: float,
                   standardize: bool, progress: ProgressCallback | None = None
                   ) -> list[list[tuple[float, float, int, bool]]]:
    """One logistic probe per (layer, target). ``layers``: C-contiguous ``[n, d]`` arrays, all
    float32 or all float64, read in place; each target is (class index of every sample
    ``[n]``, n_classes, class weights or None). Returns ``[layers][targets]`` of (train
    accuracy, test accuracy (NaN without test rows), L-BFGS iterations, converged).
    ``progress(done, total)`` counts probes fitted."""
def pca_fit(x: F64, n_components: int, whiten: bool) -> dict[str, Any]:
    """``mean [d]``, ``components [k, d]``, ``explained_variance [k]``, ``explained_variance_ratio [k]``."""
def truth_fit(x: F64, y: Sequence[int], method: str, pairs: Sequence[tuple[int, int]] | None,
              seed: int) -> dict[str, Any]:
    """A truth direction: ``direction [d]`` (unit), ``threshold``; method ``mass_mean``,
    ``mass_mean_iid``, ``logistic``, ``lat`` or ``ccs``."""
def auroc(y_true: Sequence[int], scores: F64) -> float: ...
def r2_per_target(y_true: F64, y_pred: F64) -> list[float]: ...
def proximity_error(y_true: F64, y_pred: F64) -> F64:
    """Per entity ``[n]``: fraction of others whose prediction is closer to its true position."""
def great_circle_km(a: F64, b: F64) -> F64:
    """Haversine distance ``[n]`` in km between (lat, lon) rows in degrees."""

# --- plotting ---

def render_figure(spec_json: str, path: str) -> None:
    """Draw a figure (see ``mindscope.plotting``) into a PNG at ``path``, replacing it atomically."""

# --- storage ---

def write_dump_part(
    path: str,
    prompt_id: Sequence[int],
    position: Sequence[int],
    token_id: Sequence[int],
    token_text: Sequence[str],
    hooks: Sequence[tuple[str, F32]],
    dtype: str,
    metadata: dict[str, str],
    format: str = "arrow",
) -> tuple[int, int]:
    """Write one part as Arrow IPC (``format="arrow"``) or Parquet (``"parquet"``); ``hooks``:
    ``(name, [rows, d])``; dtype ``float16``/``float32``; atomically; returns its size in bytes
    and the CRC-32 of its bytes (computed while writing)."""
def part_checksum(path: str) -> int:
    """CRC-32 of a part file's bytes (what the manifest records as ``crc32``)."""
def parquet_part_rows(path: str) -> int:
    """Rows of a Parquet part (footer only); DataError naming the file if it is damaged."""
def read_parquet_column(path: str, name: str) -> npt.NDArray[Any] | list[str]:
    """One column of a Parquet part: uint32 ``[rows]``, float32 ``[rows, d]``, float16 as uint16
    bit patterns ``[rows, d]``, or a list of strings (token_text)."""
def dump_part_layout(path: str) -> dict[str, Any]:
    """Memory-map a part and report ``rows``, schema ``metadata`` and per column ``{dtype, width,
    offset, nbytes, offsets_offset}`` (byte ranges in the file). Raises DataError naming the file
    if it is not a readable part."""
