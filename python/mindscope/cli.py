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

Errors: bad input (a wrong option value, a missing or malformed file, a TOML config with an
unknown key or a value of the wrong type) prints one ``mindscope: error: ...`` line naming the
command-line flags involved and exits with 2; a failure while running (out of memory, a disk
error, a numerical failure) prints the same kind of line and exits with 1. A traceback is shown
only for a bug (an ``InternalError`` or an exception mindscope does not expect), or for every
error with ``mindscope --debug ...``.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import (ComputeError, InternalError, InvalidArgumentError, MindscopeError, MissingDependencyError,
                     ResourceError, StorageError)
from .experiments._result import write_json_atomic


# --- option types --------------------------------------------------------------------------
# argparse calls these on the command line's strings; `run` calls them on a TOML config's
# values too (after checking the TOML type given by `kind`), so the two share one definition
# of what each option accepts.

def _int_type(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.kind = (int,)  # type: ignore[attr-defined]
    parse.__name__ = f"integer >= {minimum}"
    return parse


def _float_type(low: float, high: float = math.inf, low_open: bool = False) -> Callable[[str], float]:
    left = "(" if low_open else "["
    span = f"{left}{low:g}, {high:g}]" if math.isfinite(high) else f"{left}{low:g}, inf)"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number in {span}, got {text!r}") from None
        if not (math.isfinite(value) and (value > low if low_open else value >= low) and value <= high):
            raise argparse.ArgumentTypeError(f"must be a number in {span}, got {text}")
        return value

    parse.kind = (int, float)  # type: ignore[attr-defined]
    parse.__name__ = f"number in {span}"
    return parse


POSITIVE = _int_type(1)
NON_NEGATIVE = _int_type(0)


class _Parser(argparse.ArgumentParser):
    """Usage errors as ``mindscope: error: <subcommand>: ...`` (one prefix for every error)."""

    def error(self, message: str) -> Any:  # argparse's signature: never returns
        self.print_usage(sys.stderr)
        sub = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        self.exit(2, f"mindscope: error: {sub}{message}\n")


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

    model = load_model(args.model, weights=args.weights)
    text = model.generate(
        args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed,
    )
    print(args.prompt + text)
    return 0


def _cmd_capture(args: argparse.Namespace) -> int:
    from .model import load_model

    model = load_model(args.model, weights=args.weights)
    _, cache = model.run_with_cache(args.prompts, names=args.names, positions=args.positions)
    for name, arr in cache.items():
        print(f"{name:40s} {tuple(arr.shape)} {arr.dtype}")
    return 0


def _progress(args: argparse.Namespace) -> bool | None:
    """--progress / --no-progress, or None (bars when stderr is a terminal)."""
    return getattr(args, "progress", None)


def _run_world_map(model: Any, args: argparse.Namespace) -> Any:
    from .datasets import world_cities
    from .experiments import world_map

    return world_map(model, world_cities(n=args.cities, seed=args.seed), template=args.template, seed=args.seed,
                     progress=_progress(args))


def _run_pos(model: Any, args: argparse.Namespace) -> Any:
    from .datasets import data_file, ud_pos
    from .experiments import pos_probing

    # The treebank shipped with mindscope unless --treebank or $MINDSCOPE_DATA says otherwise.
    path = args.treebank or data_file("ud_ewt_pos.jsonl")
    layers = range(0, model.n_layers, args.every)
    return pos_probing(model, ud_pos(path, max_sentences=args.sentences), layers=layers, seed=args.seed,
                       progress=_progress(args))


def _run_lie_detector(model: Any, args: argparse.Namespace) -> Any:
    from .datasets import data_file, true_false_csv
    from .experiments import truth_experiment

    # The transfer test always runs: on the facts shipped with mindscope unless --facts or
    # $MINDSCOPE_DATA names others.
    facts = true_false_csv(args.facts or data_file("facts_true_false.csv"), "facts")
    return truth_experiment(model, facts=facts, n_cities=args.cities_truth, seed=args.seed,
                            progress=_progress(args))


def _run_attribution(model: Any, args: argparse.Namespace) -> Any:
    from .experiments import attribution

    return attribution(model, args.prompt, args.target, ablation=args.ablation, unit=args.unit, window=args.window,
                       progress=_progress(args))


def _run_logit_lens(model: Any, args: argparse.Namespace) -> Any:
    from .experiments import logit_lens

    prompt = getattr(args, "lens_prompt", None) or args.prompt
    return logit_lens(model, prompt, None if hasattr(args, "lens_prompt") else args.target, progress=_progress(args))


def _run_confidence(model: Any, args: argparse.Namespace) -> Any:
    from .datasets import capital_questions
    from .experiments import confidence

    return confidence(model, *capital_questions(), progress=_progress(args))


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
    # The numbers README quotes (the world map's median error, not its mean).
    keys = ("best_layer", "best_r2_lat", "best_r2_lon", "best_median_error_km", "best_method", "best_accuracy",
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

    model = load_model(args.model, progress=_progress(args), weights=args.weights)
    _run_and_save(args.command, model, args, Path(args.out))
    return 0


def _cmd_tour(args: argparse.Namespace) -> int:
    from .model import load_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = load_model(args.model, progress=_progress(args), weights=args.weights)
    print(f"loaded {model} ({model.weights} weights) in {time.perf_counter() - t0:.1f} s")

    prompt = "The capital of France is"
    gen = model.generate(prompt, max_new_tokens=8, return_details=True)
    print(f"\n[generate] {prompt!r} -> {gen.text!r}")
    top = model.to_str_tokens(gen.token_ids[:1])[0]
    print(f"           first token {top!r} with probability {math.exp(gen.logprobs[0]):.3f}")

    logits, cache = model.run_with_cache(
        [prompt, "Paris is in"], names="blocks.*.hook_resid_post", positions="last", progress=_progress(args)
    )
    print(f"\n[capture] {len(cache)} hook points, logits {tuple(logits.shape)}")
    for name in ("blocks.0.hook_resid_post", f"blocks.{model.n_layers - 1}.hook_resid_post"):
        print(f"          {name:32s} {tuple(cache[name].shape)} {cache[name].dtype}")
    print()

    summary: dict[str, Any] = {"model": model.name, "weights": model.weights,
                               "generation": {"prompt": prompt, "continuation": gen.text, "logprobs": gen.logprobs},
                               "experiments": {}}
    skipped: dict[str, str] = {}
    for name in ("world-map", "lie-detector", "attribution", "logit-lens", "confidence", "pos"):
        try:
            result = _run_and_save(name, model, args, out)
        except MissingDependencyError as e:
            # A step that cannot run here says so, with what to install, and the tour goes on.
            print(f"[{name}] skipped: {e}")
            skipped[name] = str(e)
            continue
        summary["experiments"][result.name] = {"folder": str(out / result.name), "headline": _headline(result)}
    summary["skipped"] = skipped
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    write_json_atomic(out / "tour.json", summary)
    print(f"\ntour done in {summary['seconds']:.0f} s; summary in {out / 'tour.json'}")
    if skipped:
        print(f"{len(skipped)} of 6 experiments skipped ({', '.join(skipped)}): see the lines above for what to install")
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from .distributed import extract

    d = extract(args.model, args.input, args.out, names=args.names, positions=args.positions, dtype=args.dtype,
                batch_size=args.batch_size, part_size=args.part_size, resume=args.resume,
                overwrite=args.overwrite, quiet=args.quiet, column=args.column,
                skip_bad_lines=args.skip_bad_lines, format=args.format, engine=args.engine,
                ray_address=args.address, workers=args.workers, threads=args.threads, weights=args.weights)
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
        text = path.read_text(encoding="utf-8")
        config = tomllib.loads(text)
    except FileNotFoundError:
        raise InvalidArgumentError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise InvalidArgumentError(f"config file {path} is a folder; give a .toml file") from None
    except UnicodeDecodeError as e:
        raise InvalidArgumentError(f"{path} is not UTF-8 text (byte {e.start}); TOML files are UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgumentError(f"{path} is not valid TOML: {e}") from e
    ns = _config_namespace(path, config)
    ns.out = args.out or ns.out
    ns.progress = args.progress
    model = load_model(ns.model, progress=_progress(ns), weights=ns.weights)
    result = _run_and_save(ns.command, model, ns, Path(ns.out))
    folder = Path(ns.out) / result.name
    (folder / "config.toml").write_text(text, encoding="utf-8")
    import numpy

    versions = {"mindscope": __version__, "python": platform.python_version(), "numpy": numpy.__version__,
                "model": model.name, "weights": model.weights, "weights_sha256": model.weights_sha256()}
    (folder / "versions.json").write_text(json.dumps(versions, indent=2), encoding="utf-8")
    return 0


def _config_namespace(path: Path, config: dict[str, Any]) -> argparse.Namespace:
    """The options of a ``run`` config as the experiment's subcommand would parse them: each
    key of ``[experiment]`` is an option's name (as in ``--statement-cities`` -> the Python name
    ``cities_truth``, listed in the error), and its value must have the option's type and pass
    its checks and choices. Unknown tables or keys are refused, not ignored."""
    extra = sorted(set(config) - {"experiment"})
    if extra:
        raise InvalidArgumentError(f"{path}: unknown top-level keys {extra}; a config has one [experiment] table")
    exp = config.get("experiment")
    if not isinstance(exp, dict):
        raise InvalidArgumentError(f"{path}: needs an [experiment] table with name = one of {', '.join(EXPERIMENTS)}")
    name = exp.get("name")
    if name not in EXPERIMENTS:
        raise InvalidArgumentError(f"{path}: [experiment] name must be one of {', '.join(EXPERIMENTS)}, got {name!r}")
    sub = build_parser().subcommands[name]  # type: ignore[attr-defined]
    ns = sub.parse_args([])
    ns.command = name
    # --progress is how the run is shown, not a parameter of the experiment: not in configs.
    actions = {a.dest: a for a in sub._actions if a.dest not in ("help", "func", "command", "progress")}
    unknown = set(exp) - set(actions) - {"name"}
    if unknown:
        raise InvalidArgumentError(f"{path}: unknown parameters {sorted(unknown)} for '{name}'; "
                                   f"allowed: {', '.join(sorted(actions))}")
    for key, value in exp.items():
        if key != "name":
            setattr(ns, key, _config_value(path, key, value, actions[key]))
    return ns


def _config_value(path: Path, key: str, value: Any, action: argparse.Action) -> Any:
    """``value`` checked as the command line would check ``--option value``."""
    flag = "/".join(action.option_strings) or key
    where = f"{path}: [experiment] {key} ({flag})"
    kind = getattr(action.type, "kind", (str,))
    if isinstance(value, bool) or not isinstance(value, kind):
        want = {(int,): "an integer", (int, float): "a number", (str,): "a string"}.get(kind, str(kind))
        raise InvalidArgumentError(f"{where} must be {want}, got {type(value).__name__} {value!r}")
    if action.type is not None:
        try:
            value = action.type(str(value))
        except argparse.ArgumentTypeError as e:
            raise InvalidArgumentError(f"{where} {e}") from None
    if action.choices is not None and value not in action.choices:
        raise InvalidArgumentError(f"{where} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return value


def _add_experiment_args(p: argparse.ArgumentParser, name: str) -> None:
    if name in ("world-map", "tour"):
        p.add_argument("--cities", type=POSITIVE, default=3000, help="cities for the world map")
        p.add_argument("--template", default="{name}", help="prompt template with {name}")
    if name in ("lie-detector", "tour"):
        p.add_argument("--facts", default=None,
                       help="statement,label CSV for the out-of-distribution test (default: the 612 general "
                            "facts shipped with mindscope, or $MINDSCOPE_DATA/facts_true_false.csv)")
        p.add_argument("--statement-cities", dest="cities_truth", type=_int_type(2), default=400,
                       help="cities for the true/false statements (4 statements each)")
    if name in ("pos", "tour"):
        p.add_argument("--treebank", default=None,
                       help="CoNLL-U or JSONL POS treebank (default: UD English-EWT shipped with mindscope, "
                            "or $MINDSCOPE_DATA/ud_ewt_pos.jsonl)")
        p.add_argument("--sentences", type=POSITIVE, default=300, help="sentences to probe on")
        p.add_argument("--every", type=POSITIVE, default=3, help="probe every k-th layer")
    if name in ("attribution", "logit-lens", "tour"):
        default_prompt = ("When Mary and John went to the store, John gave a drink to" if name != "logit-lens"
                          else "The capital of France is")
        p.add_argument("--prompt", default=default_prompt, help="the prompt to explain")
        p.add_argument("--target", default=None, help="continuation to explain (default: the top next token)")
    if name == "tour":
        p.add_argument("--lens-prompt", default="The capital of France is", help="prompt for the logit lens")
    if name in ("attribution", "tour"):
        p.add_argument("--ablation", default="delete", choices=["delete", "replace", "zero", "mean"],
                       help="how a unit is removed: deleted, replaced by a neutral token, or its "
                            "embedding zeroed / set to the mean")
        p.add_argument("--unit", default="token", choices=["token", "word", "window"],
                       help="what is ablated at a time")
        p.add_argument("--window", type=POSITIVE, default=2, help="tokens per window with --unit window")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="random seed (an integer >= 0)")
    p.add_argument("--model", default="smollm2-135m", help="registered model name, Hub id or model path")
    _add_weights_arg(p)
    p.add_argument("--out", default="results", help="output folder (one subfolder per experiment)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars with rate and ETA on stderr (default: when stderr is a terminal)")


def _add_weights_arg(p: argparse.ArgumentParser) -> None:
    from .model import WEIGHTS_MODES

    p.add_argument("--weights", default=None, choices=list(WEIGHTS_MODES),
                   help="how the weight matrices are held: quantized (a GGUF's blocks as stored) or float32 "
                        "(dequantized; the exact computation); default: quantized for a quantized GGUF, else float32")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="mindscope", description="What is this language model thinking?")
    parser.add_argument("--version", action="version", version=f"mindscope {__version__}",
                        help="print the version and exit")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of every error (by default only for bugs)")
    sub = parser.add_subparsers(dest="command", required=True)
    subcommands: dict[str, argparse.ArgumentParser] = {}

    sub.add_parser("models", help="list registered models").set_defaults(func=_cmd_models)

    g = sub.add_parser("generate", help="continue a prompt")
    g.add_argument("prompt", help="the text to continue")
    g.add_argument("--model", default="smollm2-135m", help="registered model name, Hub id or model path")
    _add_weights_arg(g)
    g.add_argument("--max-new-tokens", type=POSITIVE, default=20, help="tokens to generate")
    g.add_argument("--temperature", type=_float_type(0.0), default=0.0,
                   help="sampling temperature (0 = greedy)")
    g.add_argument("--top-k", type=POSITIVE, default=None, help="sample among the k most likely tokens")
    g.add_argument("--top-p", type=_float_type(0.0, 1.0, low_open=True), default=None,
                   help="nucleus sampling: the smallest set of tokens with this total probability")
    g.add_argument("--seed", type=NON_NEGATIVE, default=0, help="sampling seed (an integer >= 0)")
    g.set_defaults(func=_cmd_generate)

    c = sub.add_parser("capture", help="print shapes of captured activations")
    c.add_argument("prompts", nargs="+", help="one or more prompts")
    c.add_argument("--model", default="smollm2-135m", help="registered model name, Hub id or model path")
    _add_weights_arg(c)
    c.add_argument("--names", default="blocks.*.hook_resid_post", help="hook name or glob")
    c.add_argument("--positions", default="last", choices=["all", "last"],
                   help="capture every token or only the last one")
    c.set_defaults(func=_cmd_capture)

    helps = {"world-map": "probe city names for latitude/longitude", "pos": "POS probing with a control task",
             "lie-detector": "truth directions per layer", "attribution": "input-ablation attribution",
             "logit-lens": "each layer's next-token guess", "confidence": "calibration on known answers"}
    for name, text in helps.items():
        e = subcommands[name] = sub.add_parser(name, help=text)
        _add_experiment_args(e, name)
        e.set_defaults(func=_cmd_experiment)

    x = sub.add_parser("extract", help="stream activations over a corpus to an Arrow dump")
    x.add_argument("input", help="prompts: .txt (one per line), .jsonl, .csv or .parquet, or a folder of them "
                                 "(read in name order)")
    x.add_argument("--out", required=True, help="dump folder")
    x.add_argument("--model", default="smollm2-135m", help="registered model name, Hub id or model path")
    _add_weights_arg(x)
    x.add_argument("--names", default="blocks.*.hook_resid_post", help="hook name or glob")
    x.add_argument("--positions", default="last", choices=["last", "all"],
                   help="store every token or only the last one")
    x.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="stored precision")
    x.add_argument("--format", default="arrow", choices=["arrow", "parquet"],
                   help="part files: Arrow IPC (memory-mapped on reading) or Parquet")
    x.add_argument("--batch-size", type=POSITIVE, default=32, help="prompts per model call")
    x.add_argument("--part-size", type=POSITIVE, default=1024, help="prompts per part file")
    x.add_argument("--column", default="text", help="column / field with the text (jsonl, csv, parquet)")
    x.add_argument("--resume", action="store_true", help="complete an interrupted dump")
    x.add_argument("--overwrite", action="store_true", help="replace an existing dump")
    x.add_argument("--skip-bad-lines", action="store_true", help="skip malformed input lines")
    x.add_argument("--quiet", action="store_true", help="no progress bar")
    x.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local: in this process; ray: a Ray Data actor pool (pip install 'mindscope[ray]')")
    x.add_argument("--address", default=None,
                   help="Ray cluster to use (e.g. 127.0.0.1:6379, auto, ray://host:10001); default: a private "
                        "local instance started for the run")
    x.add_argument("--workers", type=POSITIVE, default=1, help="Ray actors, each with its own copy of the model")
    x.add_argument("--threads", type=POSITIVE, default=None,
                   help="cores per Ray actor (its num_cpus and thread pool); default 1")
    x.set_defaults(func=_cmd_extract)

    r = sub.add_parser("run", help="run an experiment from a TOML config")
    r.add_argument("config", help="TOML file with an [experiment] table (name = ..., parameters)")
    r.add_argument("--out", default=None, help="output folder (default: the config's out, or results)")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars with rate and ETA on stderr (default: when stderr is a terminal)")
    r.set_defaults(func=_cmd_run)

    t = sub.add_parser("tour", help="the guided tour (main job): every experiment on the default model")
    _add_experiment_args(t, "tour")
    t.set_defaults(func=_cmd_tour)
    subcommands.update({"generate": g, "capture": c, "extract": x, "run": r, "tour": t})
    parser.subcommands = subcommands  # type: ignore[attr-defined]  # for `run` and error messages
    return parser


# Errors that mean "the input was wrong" (exit 2) rather than "running failed" (exit 1).
_RUNTIME_ERRNOS = {errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.ENOMEM, errno.EROFS}


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, (ResourceError, ComputeError)):
        return 1
    if isinstance(exc, (StorageError, OSError)):
        cause = exc if not isinstance(exc, StorageError) else exc.__cause__
        return 1 if isinstance(cause, OSError) and cause.errno in _RUNTIME_ERRNOS else 2
    return 2


def _for_cli(message: str, sub: argparse.ArgumentParser | None) -> str:
    """Python argument names in a library message (``pass resume=True``) as the subcommand's
    flags (``pass --resume``), so the advice can be followed on the command line."""
    if sub is None:
        return message
    for action in sub._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            message = re.sub(rf"\b{action.dest}=True\b", flag, message)
        else:
            message = re.sub(rf"\b{action.dest}=(?=\S)", f"{flag} ", message)
    return message


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 runtime failure, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    sub = parser.subcommands.get(args.command)  # type: ignore[attr-defined]
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("mindscope: interrupted", file=sys.stderr)
        return 130
    except InternalError:
        # A bug: the traceback is what a report needs.
        traceback.print_exc()
        print("mindscope: internal error (a bug in mindscope; please report it with the traceback above)",
              file=sys.stderr)
        return 1
    except (MindscopeError, OSError, UnicodeError) as exc:
        if args.debug:
            traceback.print_exc()
        if isinstance(exc, OSError) and not isinstance(exc, MindscopeError) and exc.filename:
            text = f"{exc.strerror or exc}: {exc.filename}"
        elif isinstance(exc, UnicodeDecodeError):
            text = f"input is not UTF-8 text ({exc.reason} at byte {exc.start})"
        else:
            text = str(exc)
        print(f"mindscope: error: {_for_cli(text, sub)}", file=sys.stderr)
        return _exit_code(exc)
    # Any other exception is a bug in mindscope and keeps Python's traceback (exit status 1).


if __name__ == "__main__":
    sys.exit(main())
