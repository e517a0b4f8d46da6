"""Gemma 3 (GGUF, K-quants, SentencePiece) and all-MiniLM-L6-v2 (BERT, Hugging Face folder)
against what `transformers` computes (../shared/reference/gemma3, ../shared/reference/minilm)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import mindscope as ms
from mindscope.errors import InvalidArgumentError, ModelFormatError, StorageError, UnsupportedArchitectureError

from conftest import shared_path


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def gemma_reference():
    folder = shared_path("reference", "gemma3")
    meta = json.loads((folder / "meta.json").read_text())
    out = []
    for i, prompt in enumerate(meta["prompts"]):
        with np.load(folder / f"prompt{i}.npz") as z:
            out.append((prompt, {k: z[k] for k in z.files}))
    return out


@pytest.fixture(scope="module")
def minilm_reference():
    folder = shared_path("reference", "minilm")
    meta = json.loads((folder / "meta.json").read_text())
    with np.load(folder / "batch.npz") as z:
        return meta["sentences"], {k: z[k] for k in z.files}


# --- Gemma 3 ----------------------------------------------------------------------------------

def test_gemma_config_comes_from_the_gguf(gemma):
    c = gemma.cfg
    assert (c["family"], c["n_layers"], c["d_model"], c["n_heads"], c["n_kv_heads"], c["d_head"]) == (
        "gemma3", 18, 640, 4, 1, 256)
    assert c["vocab_size"] == 262144 and c["sliding_window"] == 512 and c["add_bos"]
    # transformers' layer_types: every 6th layer attends globally.
    meta = json.loads(shared_path("reference", "gemma3", "meta.json").read_text())
    assert c["sliding_layers"] == [t == "sliding_attention" for t in meta["config"]["layer_types"]]


def test_gemma_token_ids_equal_reference_and_round_trip(gemma, gemma_reference):
    for prompt, _ in gemma_reference:
        ids = gemma.to_tokens(prompt["text"])
        assert ids == prompt["input_ids"], prompt["text"]
        assert gemma.to_str_tokens(ids)[1:] == [t.replace("▁", " ") for t in prompt["tokens"][1:]]
        assert gemma.decode(ids[1:]) == prompt["text"]
    for text in ["  two  spaces\n\n\ttab", "emoji 🦀 and Ω≈ç√", "<start_of_turn>user\nhi<end_of_turn>"]:
        assert gemma.decode(gemma.to_tokens(text)[1:]) == text
    # A control token in the text is one token, as in the chat template.
    assert gemma.to_tokens("<start_of_turn>")[1:] == [gemma.cfg["bos_token_id"] + 103]


@pytest.fixture(scope="module")
def gemma_runs(gemma, gemma_reference):
    """Each reference prompt alone, and all three in one right-padded batch."""
    texts = [p["text"] for p, _ in gemma_reference]
    names = lambda n: n.endswith("hook_resid_post") or n.endswith("hook_pattern")  # noqa: E731
    single = [gemma.run_with_cache([t], names=names, return_logits="last") for t in texts]
    batched = gemma.run_with_cache(texts, names=names, return_logits="last")
    return single, batched


@pytest.mark.parametrize("mode", ["single", "batched"])
def test_gemma_matches_transformers(mode, gemma_runs, gemma_reference):
    single, batched = gemma_runs
    for i, (prompt, ref) in enumerate(gemma_reference):
        logits, cache = single[i] if mode == "single" else batched
        row = 0 if mode == "single" else i
        n = len(prompt["input_ids"])
        # Last-position log-probs within 1e-3 (the tolerance).
        np.testing.assert_allclose(_log_softmax(logits[row]), ref["logprobs_last"], atol=1e-3)
        assert int(np.argmax(logits[row])) == prompt["top5_next"][0][0]
        for layer in range(18):
            got = cache[f"blocks.{layer}.hook_resid_post"][row, :n]
            want = ref["resid_post"][layer]
            # Relative to the layer's scale: Gemma's residual stream reaches the hundreds.
            err = np.abs(got - want).max() / np.abs(want).max()
            assert err < 1e-4, f"prompt {i} layer {layer}: relative error {err:.2e}"
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"][row, :, :n, :n]
            np.testing.assert_allclose(pattern, ref["attentions"][layer], atol=1e-4)


def test_gemma_generates_and_gives_per_token_logprobs(gemma, gemma_reference):
    prompt, ref = gemma_reference[0]
    gen = gemma.generate(prompt["text"], max_new_tokens=4, temperature=0.0, return_details=True)
    assert gen.token_ids[0] == prompt["top5_next"][0][0]
    assert abs(gen.logprobs[0] - prompt["top5_next"][0][2]) < 1e-3
    assert len(gen.token_ids) == 4 and gen.text == gemma.decode(gen.token_ids)


def test_gemma_ablation_equals_the_naive_loop(gemma):
    """The attribution engine (shared K/V prefix, batching) on the second architecture."""
    prompt = gemma.to_tokens("The Eiffel Tower is in the city of")
    target = [gemma.token_id(" Paris")]
    spans = [(i, i + 1) for i in range(1, len(prompt))]
    for kind in ["delete", "zero", "mean"]:
        slow = gemma.ablation_scores(prompt, target, spans, kind, naive=True)
        # batch_size 4: several packs continuing a cached clean run; 64: one pack that
        # carries the clean sequence as its first segment.
        for batch_size in (4, 64):
            fast = gemma.ablation_scores(prompt, target, spans, kind, batch_size=batch_size)
            np.testing.assert_allclose(fast[1], slow[1], atol=1e-3, rtol=1e-4)
            assert abs(fast[0] - slow[0]) < 1e-4


def test_sliding_window_limits_attention_beyond_512_tokens(gemma):
    ids = [gemma.cfg["bos_token_id"]] + [gemma.token_id(" the")] * 600
    _, cache = gemma.run_with_cache([ids], names=["blocks.0.attn.hook_pattern", "blocks.5.attn.hook_pattern"],
                                    positions="last", return_logits=False)
    local, glob = cache["blocks.0.attn.hook_pattern"][0], cache["blocks.5.attn.hook_pattern"][0]
    # Layer 0 slides: the last query (position 600) sees keys 89..600 only; layer 5 is global.
    assert np.all(local[:, :89] == 0) and np.all(local[:, 89:].sum(-1) > 0.999)
    assert np.all(glob[:, 0] > 0)


# --- all-MiniLM-L6-v2 -------------------------------------------------------------------------

def test_minilm_tokens_hidden_states_and_patterns_match(minilm, minilm_reference):
    sentences, ref = minilm_reference
    mask = ref["attention_mask"].astype(bool)
    for i, s in enumerate(sentences):
        assert minilm.to_tokens(s) == [int(t) for t in ref["input_ids"][i][mask[i]]]
    # HF's hidden_states[0] is the embedding stage's output (after its LayerNorm): block 0's input.
    names = lambda n: n == "blocks.0.hook_resid_pre" or n.endswith("hook_resid_post") or n.endswith("hook_pattern")  # noqa: E731
    logits, cache = minilm.run_with_cache(sentences, names=names)
    assert logits is None
    for i in range(len(sentences)):
        n = int(mask[i].sum())
        for layer in range(7):
            name = "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"
            np.testing.assert_allclose(cache[name][i, :n], ref["hidden_states"][layer, i, :n], atol=1e-4)
        for layer in range(6):
            got = cache[f"blocks.{layer}.attn.hook_pattern"][i, :, :n, :n]
            np.testing.assert_allclose(got, ref["attentions"][layer, i, :, :n, :n], atol=1e-4)


def test_minilm_sentence_embeddings_in_a_padded_batch(minilm, minilm_reference):
    sentences, ref = minilm_reference
    # A much longer sentence in the batch forces real padding on the reference ones.
    long = "This sentence is here only to make the batch much longer than the others, " * 3
    emb = minilm.embed(sentences + [long], batch_size=4)[:3]
    cos = (emb * ref["sentence_embeddings"]).sum(1) / np.linalg.norm(ref["sentence_embeddings"], axis=1)
    assert np.all(cos > 0.99999), cos
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # Paraphrases are closer than unrelated sentences.
    a, b, c = minilm.embed(["A man plays the guitar.", "Someone is playing a guitar.", "The stock market fell."])
    assert a @ b > a @ c + 0.3


def test_no_candle_thread_pool_beside_the_cores_chunks(minilm):
    """Importing mindscope keeps candle's own element-wise thread pool empty (the encoder's
    LayerNorm and bias adds are candle ops), so that chunks running one per core do not queue
    for it; the threads' names are read from /proc (Linux)."""
    import os

    if not os.path.isdir("/proc/self/task"):
        pytest.skip("thread names are read from /proc (Linux)")
    minilm.embed(["The quick brown fox jumps over the lazy dog. " * 20] * 4, batch_size=4)
    names = []
    for t in os.listdir("/proc/self/task"):
        try:  # a short-lived thread (a call's watcher) may end between listing and reading
            with open(f"/proc/self/task/{t}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:
            pass
    assert names and not [n for n in names if n.startswith("candle-bp")], names


def test_encoder_refuses_decoder_only_operations(minilm, model):
    with pytest.raises(InvalidArgumentError, match="encoder"):
        minilm.generate("hello")
    with pytest.raises(InvalidArgumentError, match="no logits"):
        minilm.run_with_cache(["hello"], names=[], return_logits="last")
    with pytest.raises(InvalidArgumentError, match="decoder"):
        model.embed(["hello"])
    assert "ln_final.hook_normalized" not in minilm.hook_names()


# --- Hugging Face folders: bad input ----------------------------------------------------------

@pytest.fixture()
def minilm_copy(tmp_path: Path) -> Path:
    src = Path(ms.list_models()["minilm-l6"])
    dst = tmp_path / "minilm"
    dst.mkdir()
    for name in ["config.json", "tokenizer.json", "model.safetensors"]:
        (dst / name).symlink_to(src / name)
    return dst


def test_a_folder_copy_loads_by_path(minilm_copy, minilm):
    m = ms.load_model(minilm_copy)
    np.testing.assert_array_equal(m.embed(["same numbers"]), minilm.embed(["same numbers"]))


def test_folder_missing_a_file_names_it(minilm_copy):
    (minilm_copy / "tokenizer.json").unlink()
    with pytest.raises(ModelFormatError, match="tokenizer.json"):
        ms.load_model(minilm_copy)


def test_unsupported_model_type_lists_the_supported_ones(minilm_copy):
    cfg = json.loads((minilm_copy / "config.json").read_text())
    (minilm_copy / "config.json").unlink()
    (minilm_copy / "config.json").write_text(json.dumps({**cfg, "model_type": "t5"}))
    with pytest.raises(UnsupportedArchitectureError, match="t5.*supported: llama, mistral, qwen2, qwen3, gemma3, gemma3_text, phi3, gpt2, gpt_neox, bert"):
        ms.load_model(minilm_copy)


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """A minimal safetensors writer (8-byte header length, JSON header, raw data)."""
    header, offset, blobs = {}, 0, []
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        dtype = {np.dtype("float32"): "F32", np.dtype("int64"): "I64", np.dtype("int8"): "I8"}[a.dtype]
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        blobs.append(a.tobytes())
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for b in blobs:
            f.write(b)


def test_tensor_with_wrong_shape_or_dtype_is_named(minilm_copy):
    cfg = json.loads((minilm_copy / "config.json").read_text())
    small = {**cfg, "num_hidden_layers": 1}
    (minilm_copy / "config.json").unlink()
    (minilm_copy / "config.json").write_text(json.dumps(small))
    (minilm_copy / "model.safetensors").unlink()
    d, f, v = 384, 1536, 30522
    rng = np.random.default_rng(0)
    tensors = {
        "embeddings.word_embeddings.weight": rng.normal(size=(v, d)).astype(np.float32),
        "embeddings.position_embeddings.weight": np.zeros((512, d), np.float32),
        "embeddings.token_type_embeddings.weight": np.zeros((2, d), np.float32),
        "embeddings.LayerNorm.weight": np.ones(d, np.float32),
        "embeddings.LayerNorm.bias": np.zeros(d, np.float32),
    }
    p = "encoder.layer.0."
    for name, shape in [("attention.self.query", (d, d)), ("attention.self.key", (d, d)),
                        ("attention.self.value", (d, d)), ("attention.output.dense", (d, d)),
                        ("intermediate.dense", (f, d)), ("output.dense", (d, f))]:
        tensors[p + name + ".weight"] = np.zeros(shape, np.float32)
        tensors[p + name + ".bias"] = np.zeros(shape[0], np.float32)
    for name in ["attention.output.LayerNorm", "output.LayerNorm"]:
        tensors[p + name + ".weight"] = np.ones(d, np.float32)
        tensors[p + name + ".bias"] = np.zeros(d, np.float32)
    _write_safetensors(minilm_copy / "model.safetensors", tensors)
    m = ms.load_model(minilm_copy)  # a well-formed one-layer model loads
    assert m.n_layers == 1

    bad = dict(tensors, **{p + "intermediate.dense.weight": np.zeros((f, d + 1), np.float32)})
    _write_safetensors(minilm_copy / "model.safetensors", bad)
    with pytest.raises(ModelFormatError, match=r"intermediate.dense.weight' has shape \[1536, 385\]"):
        ms.load_model(minilm_copy)

    bad = dict(tensors, **{p + "output.dense.bias": np.zeros(d, np.int8)})
    _write_safetensors(minilm_copy / "model.safetensors", bad)
    with pytest.raises(ModelFormatError, match="output.dense.bias' is stored as I8; weights must be F32, F16, BF16 or F64"):
        ms.load_model(minilm_copy)


def test_list_models_reports_every_registered_model():
    found = ms.list_models()
    assert set(found) >= {"smollm2-135m", "gemma3-270m", "minilm-l6"}
    assert all(path is not None for path in found.values())


def test_unknown_name_or_path_is_a_clear_error(tmp_path: Path):
    # A name that could be a Hub repository: not in the cache, and the registered names listed.
    with pytest.raises(StorageError, match="gemma3-270m, minilm-l6, smollm2-135m.*Looked in"):
        ms.load_model("gemma-7b")
    with pytest.raises(InvalidArgumentError, match="gemma3-270m, minilm-l6, smollm2-135m"):
        ms.load_model("not a model name")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFormatError, match="config.json and no tokenizer.json"):
        ms.load_model(empty)
    shutil.rmtree(empty)


# --- the methods on every model ---------------------------------------------------------------

def test_world_map_runs_unchanged_on_gemma_and_the_encoder(gemma, minilm):
    cities = ms.datasets.world_cities(n=300, seed=0)
    for m in (gemma, minilm):
        r = ms.world_map(m, cities, layers=[0, m.n_layers // 2, m.n_layers - 1])
        assert r.r2_lat.shape == (3,) and np.all(np.isfinite(r.r2_lon))
        # A real map, not noise: longitude is readable from some layer of both models.
        assert r.metrics()["best_r2_lon"] > 0.2, (m.name, r.metrics()["best_r2_lon"])


def test_pos_probing_and_truth_run_on_other_models(gemma, minilm):
    sentences = ms.datasets.ud_pos(shared_path("data", "ud_ewt_pos.jsonl"), max_sentences=40)
    pos = ms.pos_probing(minilm, sentences, layers=[0, 5])
    assert pos.labels[-2:] == ["L0", "L5"] and pos.accuracy.shape == (len(pos.labels),)
    assert np.all(pos.accuracy[-2:] > pos.control_accuracy[-2:])
    statements = ms.datasets.city_statements(n_cities=40, seed=0, negations=True)
    truth = ms.truth_experiment(gemma, statements, layers=[0, 9], methods=("mass_mean", "logistic"), causal_n=4)
    assert truth.accuracy.shape == (2, 2) and np.all(np.isfinite(truth.auroc))


def test_encoder_attribution_measures_embedding_similarity(minilm):
    r = ms.attribution(minilm, "The Eiffel Tower is in Paris, the capital of France.",
                       target="famous landmarks in France")
    assert r.measure == "cosine" and "[CLS]" not in r.span_labels
    # Deleting "france" lowers the similarity to a sentence about France.
    assert r.effect[r.span_labels.index("france")] > 0
    with pytest.raises(InvalidArgumentError, match="an encoder allows: delete, replace"):
        ms.attribution(minilm, "Paris is nice.", ablation="zero")
