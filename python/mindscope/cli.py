"""The ``mindscope`` command line.

Subcommands:
  models        list registered models and whether they are installed
  generate      continue a prompt
  capture       run prompts and print the shapes of captured activations
  world-map     latitude/longitude probes on city names      -> results/world_map/
  pos           part-of-speech probing with a control task    -> results/pos_probing/
  lie-detector  truth directions per layer, transfer, causal  -> results/lie_detector/
  attribution   which input tokens matter for a target        -> results/attribution/
  logit-lens    each layer's guess for the next token         -> results/logit_lens/
  confidence    calibration on capital-city questions         -> results/confidence/
  tour          the guided tour: all of the above on the default model
  extract       stream activations over a corpus to an Arrow (or Parquet) dump  -> DIR/part-*.arrow
  run           run an experiment described by a TOML config file

Every experiment writes ``metrics.json`` and a PNG into its folder.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import InvalidArgumentError, MindscopeError


def _cmd_models(args: argparse.Namespace) -> int:
    from .registry import REGISTRY, list_models

    for name, path in list_models().items():
        entry = REGISTRY.get(name)
        if entry is None:  # found in the Hugging Face cache
            print(f"{name:16s} Hugging Face cache\n{'':16s} {path}")
            continue
        status = path or f"not installed ({entry.install})"
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


def _run_world_map(model: Any, args: argparse.Namespace) -> Any:
    from .datasets import world_cities
    from .experiments import world_map

    return world_map(model, world_cities(n=args.cities, seed=args.seed), template=args.template, seed=args.seed)


def _run_pos(model: Any, args: argparse.Namespace) -> Any:
    from .datasets import shared_data_file, ud_pos
    from .experiments import pos_probing

    path = args.treebank or shared_data_file("ud_ewt_pos.jsonl")
    if path is None:
        raise InvalidArgumentError("no treebank: pass --treebank PATH (CoNLL-U or JSONL) or set $MINDSCOPE_DATA")
    layers = range(0, model.n_layers, args.every)
    return pos_probing(model, ud_pos(path, max_sentences=args.sentences), layers=layers, seed=args.seed)


def _run_lie_detector(model: Any, args: argparse.Namespace) -> Any:
    from .datasets import shared_data_file, true_false_csv
    from .experiments import truth_experiment

    facts_path = args.facts or shared_data_file("facts_true_false.csv")
    facts = true_false_csv(facts_path, "facts") if facts_path else None
    return truth_experiment(model, facts=facts, n_cities=args.cities_truth, seed=args.seed)


def _run_attribution(model: Any, args: argparse.Namespace) -> Any:
    from .experiments import attribution

    return attribution(model, args.prompt, args.target, ablation=args.ablation, unit=args.unit, window=args.window)


def _run_logit_lens(model: Any, args: argparse.Namespace) -> Any:
    from .experiments import logit_lens

    prompt = getattr(args, "lens_prompt", None) or args.prompt
    return logit_lens(model, prompt, None if hasattr(args, "lens_prompt") else args.target)


def _run_confidence(model: Any, args: argparse.Namespace) -> Any:
    from .datasets import capital_questions
    from .experiments import confidence

    return confidence(model, *capital_questions())


EXPERIMENTS: dict[str, Callable[[Any, argparse.Namespace], Any]] = {
    "world-map": _run_world_map,
    "pos": _run_pos,
    "lie-detector": _run_lie_detector,
    "attribution": _run_attribution,
    "logit-lens": _run_logit_lens,
    "confidence": _run_confidence,
}


def _headline(result: Any) -> str:
    m = result.metrics()
    keys = ("best_layer", "best_r2_lat", "best_r2_lon", "best_mean_error_km", "best_method", "best_accuracy",
            "best_auroc", "best_selectivity", "most_important", "first_layer_target_is_top1", "accuracy", "ece")
    parts = []
    for k in keys:
        if k in m:
            v = m[k]
            if isinstance(v, dict):  # e.g. best_selectivity: {"representation": "L27", ...}
                v = ", ".join(f"{a}={b:.3f}" if isinstance(b, float) else f"{a}={b}" for a, b in v.items())
                parts.append(f"{k}: {v}")
            else:
                parts.append(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)


def _run_and_save(name: str, model: Any, args: argparse.Namespace, out: Path) -> Any:
    t0 = time.perf_counter()
    result = EXPERIMENTS[name](model, args)
    paths = result.save(out / result.name)
    print(f"[{name}] {_headline(result)}")
    print(f"{'':{len(name) + 3}}wrote {paths['plot']} and {paths['metrics']} ({time.perf_counter() - t0:.0f} s)")
    return result


def _cmd_experiment(args: argparse.Namespace) -> int:
    from .model import load_model

    model = load_model(args.model)
    _run_and_save(args.command, model, args, Path(args.out))
    return 0


def _cmd_tour(args: argparse.Namespace) -> int:
    from .datasets import shared_data_file
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
    for name in ("blocks.0.hook_resid_post", f"blocks.{model.n_layers - 1}.hook_resid_post"):
        print(f"          {name:32s} {tuple(cache[name].shape)} {cache[name].dtype}")
    print()

    summary: dict[str, Any] = {"model": model.name,
                               "generation": {"prompt": prompt, "continuation": gen.text, "logprobs": gen.logprobs},
                               "experiments": {}}
    steps = ["world-map", "lie-detector", "attribution", "logit-lens", "confidence"]
    if args.treebank or shared_data_file("ud_ewt_pos.jsonl"):
        steps.append("pos")
    else:
        print("[pos] skipped: no treebank found (pass --treebank PATH or set $MINDSCOPE_DATA)")
    for name in steps:
        result = _run_and_save(name, model, args, out)
        summary["experiments"][result.name] = {"folder": str(out / result.name), "headline": _headline(result)}
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "tour.json").write_text(json.dumps(summary, indent=2))
    print(f"\ntour done in {summary['seconds']:.0f} s; summary in {out / 'tour.json'}")
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from .model import load_model

    model = load_model(args.model)
    d = model.dump(args.input, args.out, names=args.names, positions=args.positions, dtype=args.dtype,
                   batch_size=args.batch_size, part_size=args.part_size, resume=args.resume,
                   overwrite=args.overwrite, quiet=args.quiet, column=args.column,
                   skip_bad_lines=args.skip_bad_lines, format=args.format)
    print(d)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    """Run ``[experiment] name = "world-map"`` with its parameters from a TOML file; the results
    folder gets metrics, plot, the config itself and the versions used."""
    import platform
    import tomllib

    from . import __version__
    from .model import load_model

    path = Path(args.config)
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidArgumentError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgumentError(f"{path} is not valid TOML: {e}") from e
    exp = config.get("experiment", {})
    name = exp.get("name")
    if name not in EXPERIMENTS:
        raise InvalidArgumentError(f"{path}: [experiment] name must be one of {', '.join(EXPERIMENTS)}, got {name!r}")
    parser = build_parser()
    ns = parser.parse_args([name])
    allowed = set(vars(ns)) - {"func", "command"}
    unknown = set(exp) - allowed - {"name"}
    if unknown:
        raise InvalidArgumentError(f"{path}: unknown parameters {sorted(unknown)} for '{name}'; "
                                   f"allowed: {', '.join(sorted(allowed))}")
    for k, v in exp.items():
        if k != "name":
            setattr(ns, k, v)
    ns.out = args.out or ns.out
    model = load_model(ns.model)
    result = _run_and_save(name, model, ns, Path(ns.out))
    folder = Path(ns.out) / result.name
    (folder / "config.toml").write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    import numpy

    versions = {"mindscope": __version__, "python": platform.python_version(), "numpy": numpy.__version__,
                "model": model.name, "weights_sha256": model.weights_sha256()}
    (folder / "versions.json").write_text(json.dumps(versions, indent=2), encoding="utf-8")
    return 0


def _add_experiment_args(p: argparse.ArgumentParser, name: str) -> None:
    if name in ("world-map", "tour"):
        p.add_argument("--cities", type=int, default=3000, help="cities for the world map")
        p.add_argument("--template", default="{name}", help="prompt template with {name}")
    if name in ("lie-detector", "tour"):
        p.add_argument("--facts", default=None, help="statement,label CSV for out-of-distribution tests")
        p.add_argument("--statement-cities", dest="cities_truth", type=int, default=400,
                       help="cities for the true/false statements (4 statements each)")
    if name in ("pos", "tour"):
        p.add_argument("--treebank", default=None, help="CoNLL-U or JSONL POS treebank")
        p.add_argument("--sentences", type=int, default=300, help="sentences to probe on")
        p.add_argument("--every", type=int, default=3, help="probe every k-th layer")
    if name in ("attribution", "logit-lens", "tour"):
        default_prompt = ("When Mary and John went to the store, John gave a drink to" if name != "logit-lens"
                          else "The capital of France is")
        p.add_argument("--prompt", default=default_prompt)
        p.add_argument("--target", default=None, help="continuation to explain (default: the top next token)")
    if name == "tour":
        p.add_argument("--lens-prompt", default="The capital of France is", help="prompt for the logit lens")
    if name in ("attribution", "tour"):
        p.add_argument("--ablation", default="delete", choices=["delete", "replace", "zero", "mean"])
        p.add_argument("--unit", default="token", choices=["token", "word", "window"])
        p.add_argument("--window", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--out", default="results", help="output folder (one subfolder per experiment)")


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

    helps = {"world-map": "probe city names for latitude/longitude", "pos": "POS probing with a control task",
             "lie-detector": "truth directions per layer", "attribution": "input-ablation attribution",
             "logit-lens": "each layer's next-token guess", "confidence": "calibration on known answers"}
    for name, text in helps.items():
        e = sub.add_parser(name, help=text)
        _add_experiment_args(e, name)
        e.set_defaults(func=_cmd_experiment)

    x = sub.add_parser("extract", help="stream activations over a corpus to an Arrow dump")
    x.add_argument("input", help="prompts: .txt (one per line), .jsonl, .csv or .parquet")
    x.add_argument("--out", required=True, help="dump folder")
    x.add_argument("--model", default="smollm2-135m")
    x.add_argument("--names", default="blocks.*.hook_resid_post", help="hook name or glob")
    x.add_argument("--positions", default="last", choices=["last", "all"])
    x.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    x.add_argument("--format", default="arrow", choices=["arrow", "parquet"],
                   help="part files: Arrow IPC (memory-mapped on reading) or Parquet")
    x.add_argument("--batch-size", type=int, default=32)
    x.add_argument("--part-size", type=int, default=1024, help="prompts per part file")
    x.add_argument("--column", default="text", help="column / field with the text (jsonl, csv, parquet)")
    x.add_argument("--resume", action="store_true", help="complete an interrupted dump")
    x.add_argument("--overwrite", action="store_true", help="replace an existing dump")
    x.add_argument("--skip-bad-lines", action="store_true", help="skip malformed input lines")
    x.add_argument("--quiet", action="store_true", help="no progress bar")
    x.set_defaults(func=_cmd_extract)

    r = sub.add_parser("run", help="run an experiment from a TOML config")
    r.add_argument("config", help="TOML file with an [experiment] table (name = ..., parameters)")
    r.add_argument("--out", default=None, help="output folder (default: the config's out, or results)")
    r.set_defaults(func=_cmd_run)

    t = sub.add_parser("tour", help="the guided tour (main job): every experiment on the default model")
    _add_experiment_args(t, "tour")
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
