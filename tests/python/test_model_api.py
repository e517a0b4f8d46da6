"""Hooks, capture specs, interventions, generation and bad input on the packaged model."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import mindscope as ms
from mindscope import errors

PROMPTS = ["The capital of France is", "Paris is in"]


def test_hook_names_cover_every_layer(model):
    names = model.hook_names()
    assert names[0] == "hook_embed" and names[-1] == "ln_final.hook_normalized"
    for i in (0, model.n_layers - 1):
        for kind in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out",
                     "hook_mlp_out", "attn.hook_q", "attn.hook_k", "attn.hook_v",
                     "attn.hook_pattern", "attn.hook_z", "mlp.hook_post"):
            assert f"blocks.{i}.{kind}" in names
    assert len(names) == 2 + 11 * model.n_layers


def test_issue_example_shapes(model):
    logits, cache = model.run_with_cache(PROMPTS, names="blocks.*.hook_resid_post", positions="last")
    assert logits.shape == (2, model.cfg["vocab_size"])
    assert len(cache) == model.n_layers
    act = cache["blocks.12.hook_resid_post"]
    assert act.dtype == np.float32 and act.shape == (2, model.d_model)
    # The buffer is the one Rust filled, handed to numpy without a copy.
    assert act.flags["C_CONTIGUOUS"] and not act.flags["OWNDATA"]


def test_shapes_of_every_kind(model):
    c = model.cfg
    n = len(model.to_tokens(PROMPTS[0]))
    _, cache = model.run_with_cache(PROMPTS[0], names=lambda name: name.startswith("blocks.1."))
    assert cache["blocks.1.attn.hook_q"].shape == (1, n, c["n_heads"], c["d_head"])
    assert cache["blocks.1.attn.hook_k"].shape == (1, n, c["n_kv_heads"], c["d_head"])
    assert cache["blocks.1.attn.hook_pattern"].shape == (1, c["n_heads"], n, n)
    assert cache["blocks.1.mlp.hook_post"].shape == (1, n, c["d_mlp"])
    pattern = cache["blocks.1.attn.hook_pattern"][0]
    np.testing.assert_allclose(pattern.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(pattern[0], k=1) == 0)  # causal


def test_residual_stream_adds_up(model):
    _, cache = model.run_with_cache(PROMPTS[0], names=lambda n: n.startswith("blocks.4.") or n.startswith("blocks.5."))
    pre, attn, mid = cache["blocks.4.hook_resid_pre"], cache["blocks.4.hook_attn_out"], cache["blocks.4.hook_resid_mid"]
    np.testing.assert_allclose(pre + attn, mid, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(mid + cache["blocks.4.hook_mlp_out"], cache["blocks.4.hook_resid_post"], rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(cache["blocks.4.hook_resid_post"], cache["blocks.5.hook_resid_pre"])


def test_positions_variants_agree(model):
    _, full = model.run_with_cache(PROMPTS, names="blocks.3.hook_resid_post", positions="all")
    lengths = full.lengths
    a = full["blocks.3.hook_resid_post"]
    _, last = model.run_with_cache(PROMPTS, names="blocks.3.hook_resid_post", positions="last")
    _, idx = model.run_with_cache(PROMPTS, names="blocks.3.hook_resid_post", positions=[0, -1])
    _, per = model.run_with_cache(PROMPTS, names="blocks.3.hook_resid_post", positions=ms.PerPrompt([1, -2]))
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(last["blocks.3.hook_resid_post"][b], a[b, n - 1], atol=1e-5)
        np.testing.assert_allclose(idx["blocks.3.hook_resid_post"][b, 0], a[b, 0], atol=1e-5)
        np.testing.assert_allclose(idx["blocks.3.hook_resid_post"][b, 1], a[b, n - 1], atol=1e-5)
    np.testing.assert_allclose(per["blocks.3.hook_resid_post"][0], a[0, 1], atol=1e-5)
    np.testing.assert_allclose(per["blocks.3.hook_resid_post"][1], a[1, lengths[1] - 2], atol=1e-5)


def test_batching_and_order_do_not_change_results(model):
    prompts = ["a", "The quick brown fox jumps over", "Paris is in", "1 2 3 4 5 6 7 8 9"]
    _, one = model.run_with_cache(prompts, names="blocks.7.hook_resid_post", positions="last", batch_size=1)
    _, many = model.run_with_cache(prompts, names="blocks.7.hook_resid_post", positions="last", batch_size=3)
    np.testing.assert_allclose(one["blocks.7.hook_resid_post"], many["blocks.7.hook_resid_post"], atol=2e-4, rtol=1e-4)


def test_chunks_on_several_cores_equal_one_core(model, tmp_path):
    """With several threads a batch runs as one chunk per core (logits written in place into
    one buffer); a single-threaded process runs it as one chunk. Same numbers either way."""
    import os
    import subprocess
    import sys

    prompts = ["a", "The quick brown fox jumps over", "Paris is in", "1 2 3 4 5 6 7 8 9", "Hello"]
    script = ("import sys, numpy as np, mindscope as ms; m = ms.load_model('smollm2-135m', weights='float32');"
              f"l, c = m.run_with_cache({prompts!r}, names='blocks.*.hook_resid_post', positions='last',"
              " return_logits='all', batch_size=4);"
              "np.savez(sys.argv[1], logits=l, resid=c.stack('hook_resid_post'))")
    out = tmp_path / "one_core.npz"
    subprocess.run([sys.executable, "-c", script, str(out)], check=True, env=dict(os.environ, RAYON_NUM_THREADS="1"))
    one = np.load(out)
    logits, cache = model.run_with_cache(prompts, names="blocks.*.hook_resid_post", positions="last",
                                         return_logits="all", batch_size=4)
    assert logits.shape == one["logits"].shape
    np.testing.assert_allclose(logits, one["logits"], atol=1e-3)
    np.testing.assert_allclose(cache.stack("hook_resid_post"), one["resid"], atol=2e-4, rtol=1e-4)


def test_stop_at_layer_and_no_logits(model):
    logits, cache = model.run_with_cache(PROMPTS, names="blocks.2.hook_resid_post", positions="last", stop_at_layer=3)
    assert logits is None
    _, full = model.run_with_cache(PROMPTS, names="blocks.2.hook_resid_post", positions="last")
    # Not bit-identical: with stop_at_layer, block 2 is the last one run and multiplies only
    # the captured rows past its attention (fewer rows, another rounding order).
    np.testing.assert_allclose(cache["blocks.2.hook_resid_post"], full["blocks.2.hook_resid_post"],
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(errors.InvalidArgumentError, match="stop_at_layer"):
        model.run_with_cache(PROMPTS, names="blocks.5.hook_resid_post", stop_at_layer=3)


def test_logits_all_matches_last(model):
    all_logits = model.run(PROMPTS, return_logits="all")
    last = model.run(PROMPTS, return_logits="last")
    for b, prompt in enumerate(PROMPTS):
        n = len(model.to_tokens(prompt))
        np.testing.assert_allclose(all_logits[b, n - 1], last[b], atol=1e-4)


def test_ln_final_is_lm_head_input(model):
    logits, cache = model.run_with_cache(PROMPTS[0], names="ln_final.hook_normalized", positions="last")
    resid = model.run_with_cache(PROMPTS[0], names="blocks.29.hook_resid_post", positions="last")[1]
    np.testing.assert_allclose(model.unembed(resid["blocks.29.hook_resid_post"]), logits, atol=1e-3)


# --- interventions -------------------------------------------------------------------------

def test_zero_ablation_changes_output_and_is_applied(model):
    base = model.run(PROMPTS[0], return_logits="last")
    logits, cache = model.run_with_cache(
        PROMPTS[0], names="blocks.5.hook_attn_out", interventions=[("blocks.5.hook_attn_out", "zero")])
    assert np.all(cache["blocks.5.hook_attn_out"] == 0)
    assert np.abs(logits[0, -1] - base[0]).max() > 1e-2


def test_patching_from_another_prompt(model):
    clean, corrupt = "The capital of France is", "The capital of Italy is"
    assert len(model.to_tokens(clean)) == len(model.to_tokens(corrupt))
    _, clean_cache = model.run_with_cache(clean, names="blocks.0.hook_resid_pre")
    patched = model.run(corrupt, return_logits="last",
                        interventions=[("blocks.0.hook_resid_pre", ("patch", clean_cache["blocks.0.hook_resid_pre"]))])
    np.testing.assert_allclose(patched, model.run(clean, return_logits="last"), atol=1e-4)


def test_replace_at_last_position_only(model):
    vec = np.zeros((1, model.d_model), dtype=np.float32)
    _, cache = model.run_with_cache(PROMPTS[0], names="blocks.2.hook_resid_post", interventions=[
        ms.Intervention("blocks.2.hook_resid_post", "replace", value=vec, positions="last")])
    act = cache["blocks.2.hook_resid_post"][0]
    assert np.all(act[-1] == 0) and np.all(act[:-1] != 0)


def test_steering_vector_moves_logits_linearly_at_small_scale(model):
    direction = np.random.default_rng(0).standard_normal(model.d_model).astype(np.float32)
    base = model.run(PROMPTS[0], return_logits="last")
    small = model.run(PROMPTS[0], return_logits="last",
                      interventions=[("blocks.10.hook_resid_post", ("add", direction, 0.01))])
    big = model.run(PROMPTS[0], return_logits="last",
                    interventions=[("blocks.10.hook_resid_post", ("add", direction, 10.0))])
    assert 0 < np.abs(small - base).max() < np.abs(big - base).max()


def test_mean_ablation_sets_every_position_to_the_mean(model):
    _, cache = model.run_with_cache(PROMPTS[0], names="blocks.1.hook_mlp_out",
                                    interventions=[("blocks.1.hook_mlp_out", ("mean", None))])
    act = cache["blocks.1.hook_mlp_out"][0]
    np.testing.assert_allclose(act, np.broadcast_to(act[0], act.shape))


def test_callable_hook_sees_and_changes_activations(model):
    seen = {}

    def double(act: np.ndarray, name: str) -> np.ndarray:
        seen[name] = act.shape
        return act * 2

    _, plain = model.run_with_cache(PROMPTS[0], names="blocks.3.hook_mlp_out")
    _, cache = model.run_with_cache(PROMPTS[0], names="blocks.3.hook_mlp_out",
                                    interventions=[("blocks.3.hook_mlp_out", double)])
    assert seen == {"blocks.3.hook_mlp_out": plain["blocks.3.hook_mlp_out"].shape}
    np.testing.assert_allclose(cache["blocks.3.hook_mlp_out"], 2 * plain["blocks.3.hook_mlp_out"], rtol=1e-6)


def test_callable_hook_errors_surface(model):
    def boom(act, name):
        raise RuntimeError("kaput")

    # The user's own exception comes back as itself, with its traceback.
    with pytest.raises(RuntimeError, match="kaput") as info:
        model.run(PROMPTS[0], interventions=[("blocks.0.hook_mlp_out", boom)])
    assert any(entry.name == "boom" for entry in info.traceback)

    def interrupt(act, name):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model.run(PROMPTS[0], interventions=[("blocks.0.hook_mlp_out", interrupt)])

    with pytest.raises(errors.ShapeError, match="shape"):
        model.run(PROMPTS[0], interventions=[("blocks.0.hook_mlp_out", lambda a, n: a[:, :1].copy())])


# --- generation & tokenizer -----------------------------------------------------------------

def test_generation_sampling_is_seeded(model):
    kw = dict(max_new_tokens=8, temperature=0.9, top_k=50, top_p=0.95, stop_at_eos=False)
    a = model.generate("Once upon a time", seed=3, **kw)
    b = model.generate("Once upon a time", seed=3, **kw)
    c = [model.generate("Once upon a time", seed=s, **kw) for s in range(4, 8)]
    assert a == b
    assert any(x != a for x in c)


def test_generation_details(model):
    gen = model.generate("The capital of France is", max_new_tokens=3, return_details=True)
    assert len(gen.token_ids) == len(gen.logprobs) == 3
    assert all(lp <= 0 for lp in gen.logprobs)
    assert gen.text == model.decode(gen.token_ids)


def test_padded_positions_of_all_logits_are_zero(model):
    """``run(..., return_logits="all")`` zeroes the positions after each prompt's end, as the captures do."""
    prompts = ["Hi", "The capital of France is Paris, and the capital of Italy is"]
    out = model.run(prompts, return_logits="all")
    short = len(model.to_tokens(prompts[0]))
    assert out.shape[1] > short
    assert np.all(out[0, short:] == 0)
    assert np.all(np.abs(out[0, :short]).max(-1) > 0) and np.all(np.abs(out[1]).max(-1) > 0)


def test_generation_captures_hooks_at_every_step(model):
    """``generate(names=...)`` keeps the hooks in the core at every step: the prompt's
    positions, then one per new token but the last, equal (float32 weights) to a forward over
    the same tokens; attention patterns, whose key axis grows, are refused."""
    names = ["hook_embed", "blocks.*.hook_resid_post", "blocks.3.attn.hook_z"]
    gen = model.generate("The capital of France is", max_new_tokens=6, stop_at_eos=False, names=names)
    run = list(gen.prompt_ids) + list(gen.token_ids[:-1])
    assert gen.cache["blocks.29.hook_resid_post"].shape == (1, len(run), model.d_model)
    assert gen.cache["blocks.3.attn.hook_z"].shape[:2] == (1, len(run))
    assert gen.cache.tokens == [run]
    _, full = model.run_with_cache([run], names=names)
    for name in full.keys():
        a, b = gen.cache[name], full[name]
        # The KV cache sums attention in another order than the full forward: float32 noise.
        assert np.abs(a - b).max() <= 1e-4 * max(1.0, float(np.abs(b).max())), name
    # The text is what it is without the capture.
    assert gen.text == model.generate("The capital of France is", max_new_tokens=6, stop_at_eos=False)
    with pytest.raises(errors.InvalidArgumentError, match="attention pattern"):
        model.generate("Hi", max_new_tokens=2, names="blocks.0.attn.hook_pattern")
    with pytest.raises(errors.UnknownHookError):
        model.generate("Hi", max_new_tokens=2, names="blocks.99.hook_resid_post")


def test_generation_calls_python_hooks_at_every_step(model):
    """A Python function at every resid_post is called at each step with what
    ``generate(names=...)`` keeps; changing the activation in place (returning None) steers
    exactly as the core's ``("add", vector)``; what it raises comes back as itself."""
    prompt, names = "The capital of France is", "blocks.*.hook_resid_post"
    seen: dict[str, list[np.ndarray]] = {}
    gen = model.generate(prompt, max_new_tokens=4, stop_at_eos=False, names=names,
                         interventions=[(names, lambda a, n: seen.setdefault(n, []).append(a.copy()))])
    assert len(seen) == model.n_layers and all(len(steps) == 4 for steps in seen.values())
    for name, steps in seen.items():
        np.testing.assert_array_equal(np.concatenate(steps, axis=1), gen.cache[name])

    vector = np.random.default_rng(0).normal(size=model.d_model).astype(np.float32) * 4
    kw = dict(max_new_tokens=6, stop_at_eos=False, return_details=True)
    native = model.generate(prompt, interventions=[("blocks.5.hook_resid_post", ("add", vector))], **kw)

    def add_in_place(act: np.ndarray, name: str) -> None:
        act += vector

    called = model.generate(prompt, interventions=[("blocks.5.hook_resid_post", add_in_place)], **kw)
    plain = model.generate(prompt, **kw)
    assert called.token_ids == native.token_ids
    np.testing.assert_allclose(called.logprobs, native.logprobs, rtol=0, atol=1e-6)
    assert native.logprobs != plain.logprobs  # the steering did something

    def boom(act, name):
        raise RuntimeError("kaput")

    with pytest.raises(RuntimeError, match="kaput"):
        model.generate(prompt, max_new_tokens=2, interventions=[("blocks.2.hook_resid_post", boom)])


def test_import_sets_the_thread_count_unless_the_user_did():
    """Without RAYON_NUM_THREADS candle reads /proc/cpuinfo at every attention product: the
    import sets it to what rayon's pool takes anyway, and keeps a value the user set."""
    code = "import os, mindscope; print(os.environ['RAYON_NUM_THREADS'], mindscope._native.default_threads())"
    env = {k: v for k, v in os.environ.items() if k != "RAYON_NUM_THREADS"}

    def run(env: dict[str, str]) -> list[str]:
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              check=True).stdout.split()

    set_by_import, pool = run(env)
    assert set_by_import == pool and int(pool) >= 1
    assert run(dict(env, RAYON_NUM_THREADS="7"))[0] == "7"


@pytest.mark.parametrize("text", [
    "café au lait, naïve Ünïcödé — 東京 🚀 ", "  two  spaces\n\ttabs\r\n", "<|im_start|>user\nhi<|im_end|>",
    "12345678901234567890", "\u200b zero width, עברית, العربية, हिन्दी",
])
def test_tokenizer_round_trip(model, text):
    ids, offsets = model.encode_with_offsets(text)
    assert model.decode(ids) == text
    assert len(offsets) == len(ids)


def test_special_tokens_are_single_tokens(model):
    assert model.to_tokens("<|im_start|>") == [1]
    assert model.to_tokens("<|im_end|>") == [2]


# --- bad input ------------------------------------------------------------------------------

def test_unknown_hook_name_suggests(model):
    with pytest.raises(errors.UnknownHookError, match="blocks.1.hook_resid_post"):
        model.run_with_cache(PROMPTS, names=["blocks.1.hook_resid_pots"])
    with pytest.raises(KeyError):  # also a KeyError for idiomatic handling
        model.run_with_cache(PROMPTS, names=["nonsense"])


def test_bad_prompts(model):
    with pytest.raises(errors.InvalidArgumentError, match="empty"):
        model.run_with_cache([])
    with pytest.raises(errors.InvalidArgumentError, match="prompt 1 is empty"):
        model.run_with_cache(["ok", ""])
    too_long = "hello " * (model.cfg["context_length"] + 10)
    with pytest.raises(errors.InvalidArgumentError, match="context length"):
        model.run_with_cache(too_long, names=[], return_logits=False)


def test_bad_positions(model):
    with pytest.raises(errors.InvalidArgumentError, match="out of range"):
        model.run_with_cache(PROMPTS, names="blocks.0.hook_resid_post", positions=[10])
    with pytest.raises(errors.ShapeError):
        model.run_with_cache(PROMPTS, names="blocks.0.hook_resid_post", positions=ms.PerPrompt([0]))
    with pytest.raises(errors.InvalidArgumentError):
        model.run_with_cache(PROMPTS, positions="first")


def test_bad_intervention_shapes(model):
    with pytest.raises(errors.ShapeError, match="expected"):
        model.run(PROMPTS, interventions=[("blocks.0.hook_resid_post", ("replace", np.zeros((2, 3), np.float32)))])
    with pytest.raises(errors.ShapeError, match="576"):
        model.run(PROMPTS, interventions=[("blocks.0.hook_resid_post", ("add", np.ones(5), 1.0))])
    with pytest.raises(errors.InvalidArgumentError, match="action 'explode' is not known"):
        model.run(PROMPTS, interventions=[("blocks.0.hook_resid_post", ("explode", 1))])


def test_bad_model_files(tmp_path):
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(errors.ModelFormatError, match="not a GGUF file"):
        ms.load_model(not_gguf)
    with pytest.raises(errors.InvalidArgumentError, match="neither a registered model"):
        ms.load_model(tmp_path / "missing.gguf")


def test_truncated_gguf(tmp_path):
    src = ms.list_models()["smollm2-135m"]
    data = open(src, "rb").read(3_000_000)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data)
    with pytest.raises(errors.ModelFormatError, match="truncated"):
        ms.load_model(cut)


def test_unsupported_architecture(tmp_path):
    """A valid GGUF whose architecture we do not run: say which, list the supported ones."""
    import struct

    def s(x: str) -> bytes:
        b = x.encode()
        return struct.pack("<Q", len(b)) + b

    kv = s("general.architecture") + struct.pack("<I", 8) + s("mamba")
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv
    path = tmp_path / "mamba.gguf"
    path.write_bytes(header)
    with pytest.raises(errors.UnsupportedArchitectureError, match="'mamba'.*llama"):
        ms.load_model(path)


def test_matrix_products_use_the_default_blas_and_agree_with_gemm(model, tmp_path):
    """load_model hands the core MKL on an Intel CPU when the `mkl` package is installed, else
    numpy's bundled OpenBLAS; the built-in gemm kernels (MINDSCOPE_BLAS=0, in a fresh process)
    must give the same logits."""
    import os
    import subprocess
    import sys

    if os.environ.get("MINDSCOPE_BLAS", "") == "":
        with open("/proc/cpuinfo") as f:
            intel = "GenuineIntel" in f.read()
        want = (ms.backend.mkl_path() if intel else None) or ms.backend.numpy_blas_path()
        assert ms.backend.blas_library() == want == ms.backend.default_blas_path()
    prompt = "The capital of France is"
    with_blas = model.run(prompt, return_logits="last")[0]
    script = ("import sys, numpy as np, mindscope as ms; m = ms.load_model('smollm2-135m', weights='float32');"
              "assert ms.backend.blas_library() is None;"
              f"np.save(sys.argv[1], m.run({prompt!r}, return_logits='last')[0])")
    out = tmp_path / "gemm_logits.npy"
    subprocess.run([sys.executable, "-c", script, str(out)], check=True, env=dict(os.environ, MINDSCOPE_BLAS="0"))
    np.testing.assert_allclose(np.load(out), with_blas, atol=1e-3)
    with pytest.raises(errors.InvalidArgumentError):
        ms.backend.use_blas("/nonexistent/libopenblas.so")


def test_openblas_choice_loads_numpy_openblas_even_beside_mkl():
    """MINDSCOPE_BLAS=openblas picks numpy's OpenBLAS whether or not MKL is installed, and an
    unknown word is an error naming the allowed values, not a silent fallback."""
    import os
    import subprocess
    import sys

    script = "import mindscope as ms; ms.load_model('smollm2-135m'); print(ms.backend.blas_library())"
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=dict(os.environ, MINDSCOPE_BLAS="openblas"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ms.backend.numpy_blas_path()
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=dict(os.environ, MINDSCOPE_BLAS="fastest"))
    assert res.returncode != 0
    assert "InvalidArgumentError" in res.stderr and "fastest" in res.stderr


def test_mkl_choice_loads_mkl_or_names_the_missing_package(model, tmp_path):
    """MINDSCOPE_BLAS=mkl loads libmkl_rt from the `mkl` package: with it installed the logits
    agree with the default kernels; without it (as in CI) load_model says what to install
    instead of silently multiplying with something else."""
    import os
    import subprocess
    import sys

    prompt = "The capital of France is"
    script = ("import sys, numpy as np, mindscope as ms; m = ms.load_model('smollm2-135m', weights='float32');"
              "print(ms.backend.blas_library());"
              f"np.save(sys.argv[1], m.run({prompt!r}, return_logits='last')[0])")
    out = tmp_path / "mkl_logits.npy"
    res = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True,
                         env=dict(os.environ, MINDSCOPE_BLAS="mkl"))
    if ms.backend.mkl_path() is None:
        assert res.returncode != 0
        assert "InvalidArgumentError" in res.stderr and "pip install mkl" in res.stderr
    else:
        assert res.returncode == 0, res.stderr
        assert "libmkl_rt" in res.stdout
        np.testing.assert_allclose(np.load(out), model.run(prompt, return_logits="last")[0], atol=1e-3)
