"""Activation dumps: stream activations over a corpus into Arrow IPC files (or Parquet on
request), read them back memory-mapped.

Layout of a dump folder::

    manifest.json          model, hook spec, dtype, versions, and the list of complete parts
    part-00000.arrow       Arrow IPC (Feather v2) file, one record batch:
                           prompt_id, position, token_id, token_text, then one
                           FixedSizeList<float16|float32>[d] column per hook
    (part-00000.parquet    the same columns as Parquet, one row group, with format="parquet")

One file per part with every hook as a column: Arrow keeps each column's values in one
contiguous buffer, so reading "one layer, all prompts" maps one byte range per part and never
touches the other layers; and a part is the unit of crash safety (written under a temporary
name and renamed when complete, then recorded in the manifest).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import _native
from .datasets import not_utf8_error
from .errors import DataError, InvalidArgumentError, StorageError
from .progress import ProgressBar, check_progress, progress_bar
from .experiments._result import write_json_atomic
from .model import WEIGHTS_MODES

FORMAT = "mindscope.dump/1"
#: Part file formats and their extensions. Arrow IPC is the default: it is memory-mapped on
#: reading (zero copy); Parquet pages are decoded on reading.
FILE_FORMATS = {"arrow": ".arrow", "parquet": ".parquet"}
_POSITIONS = ("last", "all")


# --- input corpora ------------------------------------------------------------------------

def read_texts(source: str | os.PathLike[str] | Sequence[str], column: str = "text",
               skip_bad_lines: bool = False) -> list[str]:
    """Prompts from a list, or from a file: ``.txt`` (one prompt per line), ``.jsonl``
    (``{"text": ...}`` per line), ``.csv`` or ``.parquet`` (column ``column``), or from a folder
    of such files (sorted by name, concatenated in that order). A malformed
    line raises :class:`DataError` with its number, unless ``skip_bad_lines``.

    CSV is read strictly: a quoted field may span lines, but a quote still open at the end of
    the file (which would swallow every later line into one prompt) is a malformed line at the
    line where its record starts; with ``skip_bad_lines`` that record is dropped with a warning
    saying how many lines it covered. A file that is not UTF-8 is a :class:`DataError` naming
    the line and byte, whatever ``skip_bad_lines`` says (re-encode the file)."""
    if not isinstance(source, (str, os.PathLike)):
        try:
            texts = list(source)
        except TypeError:
            raise InvalidArgumentError(f"texts must be a file path or a list of strings, "
                                       f"got {type(source).__name__}") from None
        if not all(isinstance(t, str) for t in texts):
            raise InvalidArgumentError("texts must be strings")
        return texts
    path = os.fspath(source)
    if os.path.isdir(path):
        return _read_folder(path, column, skip_bad_lines)
    if not os.path.isfile(path):
        raise StorageError(f"{path} does not exist or is not a file")
    out: list[str] = []

    def bad(line_no: int, why: str) -> None:
        if not skip_bad_lines:
            raise DataError(f"{path}:{line_no}: {why} (pass skip_bad_lines=True to skip such lines)")

    if path.endswith(".parquet"):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as e:
            raise DataError("reading Parquet input needs pyarrow: pip install pyarrow") from e
        try:
            table = pq.read_table(path, columns=[column])
        except (pa.ArrowException, KeyError, ValueError) as e:
            raise DataError(f"{path}: cannot read column '{column}' as Parquet: {e}") from None
        for i, v in enumerate(table.column(column).to_pylist()):
            if not isinstance(v, str) or not v:
                bad(i + 1, f"row {i} of '{column}' is not a non-empty string ({v!r})")
                continue
            out.append(v)
        return out
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if path.endswith(".jsonl"):
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        value = json.loads(line)[column]
                    except (json.JSONDecodeError, KeyError, TypeError, IndexError):
                        bad(i, f"not a JSON object with a '{column}' field")
                        continue
                    if not isinstance(value, str) or not value:
                        bad(i, f"'{column}' is not a non-empty string")
                        continue
                    out.append(value)
            elif path.endswith(".csv"):
                out = _read_csv_texts(f, path, column, bad)
            else:
                # newline="" keeps "\r\n": strip both, or CRLF files give prompts ending in "\r".
                out = [line.rstrip("\r\n") for line in f if line.strip()]
    except UnicodeDecodeError:
        raise not_utf8_error(path) from None
    return out


#: Extensions of the corpus files :func:`read_texts` reads from a folder (others are ignored).
CORPUS_EXTENSIONS = (".txt", ".jsonl", ".csv", ".parquet")


def _read_folder(path: str, column: str, skip_bad_lines: bool) -> list[str]:
    """The prompts of every corpus file in the folder ``path`` (not its subfolders), files
    sorted by name and concatenated in that order, so prompt ids are stable across runs."""
    files = sorted(f for f in os.listdir(path)
                   if f.endswith(CORPUS_EXTENSIONS) and os.path.isfile(os.path.join(path, f)))
    if not files:
        raise DataError(f"{path} holds no corpus files ({', '.join(CORPUS_EXTENSIONS)})")
    out: list[str] = []
    for name in files:
        out.extend(read_texts(os.path.join(path, name), column, skip_bad_lines))
    return out


def _read_csv_texts(f: Any, path: str, column: str, bad: Any) -> list[str]:
    """The ``column`` values of a CSV file, read with ``strict=True`` so that a stray quote
    is an error instead of silently merging lines (part of :func:`read_texts`)."""
    lines_read = 0

    def counted() -> Iterator[str]:
        # The reader's own line_num stops short when the file ends inside a quoted field.
        nonlocal lines_read
        for line in f:
            lines_read += 1
            yield line

    reader = csv.DictReader(counted(), strict=True)
    try:
        fieldnames = reader.fieldnames
    except csv.Error as e:
        raise DataError(f"{path}:1: malformed CSV header: {e}") from None
    if fieldnames is None or column not in fieldnames:
        raise DataError(f"{path}: no column '{column}' (columns: {fieldnames})")
    out: list[str] = []
    while True:
        start = reader.line_num + 1  # the line where the next record begins
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            end = lines_read
            if "unexpected end of data" in str(e):
                # The csv module has read to the end of the file looking for the closing quote.
                why = f"a quoted field opened here is never closed (the quote runs to line {end}, the end of the file)"
                bad(start, why)
                warnings.warn(f"{path}: skipped lines {start}-{end}: {why}", stacklevel=3)
                break
            bad(start, f"malformed CSV line: {e}")
            continue
        if None in row:  # more fields than the header
            bad(start, f"{len(fieldnames) + len(row[None])} fields for a header of {len(fieldnames)}")
            continue
        value = row.get(column)
        if not value:
            bad(start, f"empty '{column}'")
            continue
        out.append(value)
    return out


# --- writing --------------------------------------------------------------------------------

def _spec(model: Any, names: list[str], positions: str, dtype: str, n_prompts: int, part_size: int,
          file_format: str) -> dict[str, Any]:
    from . import __version__

    return {"format": FORMAT, "file_format": file_format, "model": {"name": model.name, "source": model._native.source,
                                         "sha256": model.weights_sha256()},
            # How the weights were held: the same file gives other rows in the other mode.
            "weights": model.weights,
            "hooks": names, "positions": positions, "dtype": dtype, "n_prompts": n_prompts,
            "part_size": part_size, "tokenizer": f"{model.cfg.get('architecture')} vocab {model.cfg.get('vocab_size')}",
            "mindscope_version": __version__}


def dump(model: Any, texts: str | os.PathLike[str] | Sequence[str], path: str | os.PathLike[str],
         names: str | Sequence[str] = "blocks.*.hook_resid_post", positions: str = "last",
         dtype: str = "float16", batch_size: int = 32, part_size: int = 1024, resume: bool = False,
         overwrite: bool = False, quiet: bool = False, column: str = "text",
         skip_bad_lines: bool = False, format: str = "arrow", progress: bool | None = None) -> Dump:
    """Run ``texts`` through ``model`` and stream the ``names`` hooks to an Arrow dump at
    ``path``; returns the dump, opened for reading.

    ``positions``: ``"last"`` (one row per prompt) or ``"all"`` (one row per real token).
    Every ``part_size`` prompts make one part file, written atomically; with ``resume`` the
    parts already complete are kept and the rest computed (no duplicate rows). An existing
    dump of another model or spec is refused unless ``overwrite``. ``format``: ``"arrow"``
    (Arrow IPC, memory-mapped on reading) or ``"parquet"`` (decoded on reading; DuckDB and Spark
    read it natively). :func:`mindscope.extract` writes the same files, in-process or on Ray.
    ``progress``: a bar with prompts/s and ETA (None: when interactive; ``quiet=True`` is
    ``progress=False``).
    """
    progress = False if quiet else check_progress(progress)
    check_dump_args(positions, dtype, format, part_size, batch_size)
    prompts = read_texts(texts, column, skip_bad_lines)
    if not prompts:
        raise DataError("the corpus is empty: no prompts to dump")
    hook_list = model.resolve_hooks(names)
    out = Path(path)
    spec = _spec(model, hook_list, positions, dtype, len(prompts), part_size, format)
    manifest = open_dump(out, spec, resume, overwrite)
    writer = PartWriter(out, spec)
    finished = {p["index"] for p in manifest["parts"]}
    with progress_bar(len(prompts), progress, "prompts", "dump") as bar:
        bar.update(sum(p["n_prompts"] for p in manifest["parts"]))
        for k in range(-(-len(prompts) // part_size)):
            if k in finished:
                continue
            lo, hi = k * part_size, min((k + 1) * part_size, len(prompts))
            commit_part(out, manifest, writer.write(model, prompts[lo:hi], lo, batch_size, bar))
    return load_dump(out)


def check_dump_args(positions: str, dtype: str, format: str, part_size: int, batch_size: int) -> None:
    """Raise :class:`InvalidArgumentError` for a dump argument mindscope cannot honour."""
    if positions not in _POSITIONS:
        raise InvalidArgumentError(f"positions must be one of {_POSITIONS}, got {positions!r}")
    if dtype not in ("float16", "float32"):
        raise InvalidArgumentError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    if format not in FILE_FORMATS:
        raise InvalidArgumentError(f"format must be one of {', '.join(FILE_FORMATS)}, got {format!r}")
    for key, value in (("part_size", part_size), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidArgumentError(f"{key} must be an integer of at least 1, got {value!r}")


def open_dump(out: Path, spec: dict[str, Any], resume: bool, overwrite: bool) -> dict[str, Any]:
    """Create or check the dump folder ``out`` for ``spec`` and write its manifest; returns the
    manifest, whose ``parts`` are the verified parts kept (all of them empty unless ``resume``)."""
    done = _prepare_folder(out, spec, resume, overwrite)
    manifest = {**spec, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(), "parts": done}
    write_json_atomic(out / "manifest.json", manifest)
    return manifest


def commit_part(out: Path, manifest: dict[str, Any], entry: dict[str, Any]) -> None:
    """Record a part (already renamed into place) in ``manifest`` and rewrite the manifest
    atomically. Idempotent: an entry for the same index replaces the old one, so a block run
    twice (a retried task) is listed once."""
    manifest["parts"] = [p for p in manifest["parts"] if p["index"] != entry["index"]] + [entry]
    manifest["parts"].sort(key=lambda p: p["index"])
    write_json_atomic(out / "manifest.json", manifest)


class PartWriter:
    """Turns a block of prompts into one part file of a dump (rows and hook arrays from
    :func:`_run_part`, then the native writer); picklable, so Ray workers run the same code as
    :func:`dump`.

    Each attempt writes under a name of its own (``.attempt-<random>-part-00003.arrow``) and
    renames it onto ``part-00003.arrow``: two attempts at one block (a task retried while its
    first attempt still runs) never write into the same file, and the last rename wins whole.
    """

    def __init__(self, out: Path, spec: dict[str, Any]):
        self.out = Path(out)
        self.hooks: list[str] = list(spec["hooks"])
        self.positions: str = spec["positions"]
        self.dtype: str = spec["dtype"]
        self.format: str = spec.get("file_format", "arrow")
        self.part_size: int = spec["part_size"]
        self.weights: str | None = spec.get("weights")
        self.metadata = {"mindscope": json.dumps(spec)}

    def write(self, model: Any, texts: Sequence[str], first: int, batch_size: int,
              progress: ProgressBar | None = None) -> dict[str, Any]:
        """Compute prompts ``[first, first + len(texts))`` (which must be one whole block) and
        write their part; returns its manifest entry (index, file, rows, bytes, crc32...)."""
        if first % self.part_size:
            raise InvalidArgumentError(f"a part starts at a multiple of part_size ({self.part_size}), got {first}")
        if self.weights is not None and model.weights != self.weights:
            # A worker that loaded the model in another mode would write other numbers.
            raise InvalidArgumentError(f"this dump's rows are computed with weights={self.weights!r}; the model "
                                       f"given runs with weights={model.weights!r}")
        k = first // self.part_size
        rows, arrays = _run_part(model, list(texts), first, self.hooks, self.positions, batch_size, progress)
        name = f"part-{k:05d}{FILE_FORMATS[self.format]}"
        tmp = self.out / f".attempt-{uuid.uuid4().hex[:12]}-{name}"
        try:
            nbytes, crc = _native.write_dump_part(tmp, *rows, [(h, arrays[h]) for h in self.hooks], self.dtype,
                                                  self.metadata, self.format)
            os.replace(tmp, self.out / name)
        except OSError as e:
            raise StorageError(f"cannot write part {k} to {self.out / name}: {e}") from e
        finally:
            tmp.unlink(missing_ok=True)
        return {"index": k, "file": name, "first_prompt": first, "n_prompts": len(texts),
                "rows": len(rows[0]), "bytes": nbytes, "crc32": f"{crc:08x}"}


def _prepare_folder(out: Path, spec: dict[str, Any], resume: bool, overwrite: bool) -> list[dict[str, Any]]:
    """Create ``out`` or check an existing dump; returns the complete parts to keep."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create output folder {out}: {e}") from e
    if not os.access(out, os.W_OK):
        raise StorageError(f"output folder {out} is not writable")
    # Temporary files of a part that was being written when a previous run died.
    # (and of a part attempt: .attempt-*, whose own temporary file the native writer names ..attempt-*).
    for pattern in (".part-*.partial", ".attempt-*", "..attempt-*"):
        for stale in out.glob(pattern):
            stale.unlink(missing_ok=True)
    manifest_path = out / "manifest.json"
    if not manifest_path.exists():
        if _part_files(out):
            raise StorageError(f"{out} has part files but no manifest; choose an empty folder or pass overwrite=True")
        return []
    old = _read_manifest(out)
    same = all(old.get(k, "arrow" if k == "file_format" else None) == spec[k]
               for k in ("format", "file_format", "model", "hooks", "positions", "dtype", "n_prompts", "part_size"))
    if overwrite:
        for p in _part_files(out):
            p.unlink()
        return []
    if not same:
        raise StorageError(f"{out} holds a dump of another model or spec ({old.get('model', {}).get('name')}, "
                           f"hooks {len(old.get('hooks', []))}, positions {old.get('positions')}, dtype "
                           f"{old.get('dtype')}); pass overwrite=True to replace it")
    if old.get("weights") != spec["weights"]:
        if "weights" not in old:
            raise StorageError(f"{out} holds a dump that does not record its weights mode (written before "
                               f"mindscope recorded it), so it cannot be completed with this model "
                               f"(weights={spec['weights']!r}) without risking rows of two kinds; pass "
                               "overwrite=True to replace it")
        raise StorageError(f"{out} holds a dump made with weights={old['weights']!r}; this model runs with "
                           f"weights={spec['weights']!r}, whose rows would differ. Load the model with "
                           f"weights={old['weights']!r} to resume it, or pass overwrite=True to replace it")
    if not resume:
        raise StorageError(f"{out} already holds this dump; pass resume=True to complete it or overwrite=True")
    keep = []
    for part in old["parts"]:
        try:
            _verify_part(out, part)
            keep.append(part)
        except (DataError, StorageError) as e:  # a damaged or missing part is recomputed
            warnings.warn(f"recomputing part {part['index']}: {e}", stacklevel=3)
    return keep


def _part_files(folder: Path) -> list[Path]:
    return [p for ext in FILE_FORMATS.values() for p in folder.glob(f"part-*{ext}")]


def _part_rows(path: Path) -> int:
    """Rows of a complete part; raises on a damaged file."""
    if path.suffix == ".parquet":
        return int(_native.parquet_part_rows(path))
    return int(_native.dump_part_layout(path)["rows"])


def _part_path(folder: Path, part: dict[str, Any]) -> Path:
    """The file of a manifest entry, which must be a file name inside the dump folder (a
    tampered manifest must not make mindscope read, or overwrite, files elsewhere)."""
    name = part["file"]
    path = folder / name
    if (os.path.isabs(name) or Path(name).name != name or name in (".", "..")
            or path.resolve().parent != folder.resolve()):
        raise DataError(f"{folder / 'manifest.json'}: part {part['index']} names the file {name!r}, which is "
                        "not a file inside the dump folder; refusing to read it")
    return path


def _verify_part(folder: Path, part: dict[str, Any]) -> None:
    """Check a part against its manifest entry: the file is inside the folder, its bytes have the
    recorded CRC-32 (manifests written before checksums existed have none) and it holds the
    recorded number of rows. Raises :class:`DataError` naming the part."""
    path = _part_path(folder, part)
    if not path.is_file():
        raise StorageError(f"part {part['index']} ({path}) is listed in the manifest but missing")
    if "crc32" in part:
        actual = f"{_native.part_checksum(path):08x}"
        if actual != part["crc32"]:
            raise DataError(f"part {part['index']} ({path}) has changed since it was written: CRC-32 {actual}, "
                            f"the manifest records {part['crc32']}")
    rows = _part_rows(path)
    if rows != part["rows"]:
        raise DataError(f"part {part['index']} ({path}) holds {rows} rows, the manifest records {part['rows']}")


_PART_KEYS = {"index": int, "file": str, "first_prompt": int, "n_prompts": int, "rows": int, "bytes": int}


def _read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a dump folder, checked for the keys and types mindscope relies on;
    anything else is a :class:`DataError` naming the file and what is wrong."""
    path = folder / "manifest.json"
    if not path.is_file():
        raise StorageError(f"{folder} is not a mindscope dump: no manifest.json")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text: {e}") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e}") from e
    except OSError as e:
        raise StorageError(f"cannot read {path}: {e}") from e
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: a manifest is a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")

    def bad(what: str) -> DataError:
        return DataError(f"{path}: {what}; the manifest is damaged (rewrite the dump with overwrite=True)")

    expected = {"hooks": list, "positions": str, "dtype": str, "n_prompts": int, "part_size": int, "parts": list,
                "model": dict}
    for key, kind in expected.items():
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise bad(f"'{key}' must be a {kind.__name__}, got {manifest.get(key)!r:.80}")
    if not all(isinstance(h, str) for h in manifest["hooks"]):
        raise bad("'hooks' must be a list of hook names")
    if "weights" in manifest and manifest["weights"] not in WEIGHTS_MODES:
        raise bad(f"'weights' must be one of {', '.join(WEIGHTS_MODES)}, got {manifest['weights']!r:.80}")
    if manifest["dtype"] not in _NP:
        raise bad(f"'dtype' is {manifest['dtype']!r}, not float16 or float32")
    seen: set[int] = set()
    for i, part in enumerate(manifest["parts"]):
        if not isinstance(part, dict):
            raise bad(f"parts[{i}] is not an object")
        for key, kind in _PART_KEYS.items():
            value = part.get(key)
            if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
                raise bad(f"parts[{i}]['{key}'] must be a non-negative {kind.__name__}, got {value!r:.80}")
        if "crc32" in part and not (isinstance(part["crc32"], str) and len(part["crc32"]) == 8):
            raise bad(f"parts[{i}]['crc32'] must be 8 hex digits, got {part['crc32']!r:.80}")
        if part["index"] in seen:
            raise bad(f"part {part['index']} is listed twice")
        seen.add(part["index"])
        _part_path(folder, part)
    return manifest


def _run_part(model: Any, prompts: list[str], first: int, hooks: list[str], positions: str, batch_size: int,
              progress: ProgressBar | None) -> tuple[tuple[list[int], list[int], list[int], list[str]], dict[str, np.ndarray]]:
    """Rows of a part: ``(prompt_id, position, token_id, token_text)`` columns of ``rows`` entries
    (prompt ids from ``first``) and, per hook, a ``[rows, d]`` float32 array (``d`` flattened
    over heads)."""
    ids_col: list[int] = []
    pos_col: list[int] = []
    tok_col: list[int] = []
    text_col: list[str] = []
    chunks: dict[str, list[np.ndarray]] = {h: [] for h in hooks}
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        _, cache = model.run_with_cache(batch, names=hooks, positions=positions, return_logits=False,
                                        batch_size=batch_size)
        tokens = cache.tokens
        for j, toks in enumerate(tokens):
            keep = [len(toks) - 1] if positions == "last" else list(range(len(toks)))
            ids_col.extend([first + start + j] * len(keep))
            pos_col.extend(keep)
            tok_col.extend(toks[p] for p in keep)
            text_col.extend(model.to_str_tokens([toks[p] for p in keep]))
        for h in hooks:
            arr = cache[h]
            if positions == "last":
                chunks[h].append(arr.reshape(arr.shape[0], -1))
            else:
                chunks[h].append(np.concatenate([arr[j, :len(t)].reshape(len(t), -1) for j, t in enumerate(tokens)]))
        if progress is not None:
            progress.update(len(batch))
    return (ids_col, pos_col, tok_col, text_col), {h: np.ascontiguousarray(np.concatenate(v)) for h, v in chunks.items()}


# --- reading --------------------------------------------------------------------------------

_NP = {"float16": np.float16, "float32": np.float32, "uint32": np.uint32}


class Dump:
    """A dump opened lazily: ``dump["blocks.12.hook_resid_post"]`` is ``[rows, d]`` (a memory map
    of the file for a one-part Arrow dump; parts are concatenated otherwise, see :meth:`parts`;
    Parquet parts are decoded),
    ``dump.metadata`` the manifest, ``dump.prompt_id`` / ``position`` / ``token_id`` the row
    identity, ``dump.where(prompt_ids)`` the rows of some prompts."""

    def __init__(self, folder: Path, manifest: dict[str, Any]):
        self.path = folder
        self.metadata = manifest
        self._layouts: dict[str, dict[str, Any]] = {}
        self._rows_of = {p["file"]: p["rows"] for p in manifest["parts"]}

    def __repr__(self) -> str:
        m = self.metadata
        return (f"Dump('{self.path}', model={m['model']['name']!r}, {len(m['hooks'])} hooks, "
                f"{self.n_rows} rows in {len(m['parts'])} parts, {m['dtype']})")

    @property
    def columns(self) -> list[str]:
        return ["prompt_id", "position", "token_id", "token_text", *self.metadata["hooks"]]

    @property
    def n_rows(self) -> int:
        return sum(p["rows"] for p in self.metadata["parts"])

    def _layout(self, file: str) -> dict[str, Any]:
        if file not in self._layouts:
            layout = _native.dump_part_layout(self.path / file)
            recorded = self._rows_of[file]
            if layout["rows"] != recorded:
                raise DataError(f"{self.path / file} holds {layout['rows']} rows, the manifest records {recorded}")
            self._layouts[file] = layout
        return self._layouts[file]

    def _parquet_column(self, file: str, name: str) -> np.ndarray:
        if name not in self.columns:
            raise InvalidArgumentError(f"no column '{name}' in this dump; columns: {', '.join(self.columns)}")
        col = _native.read_parquet_column(self.path / file, name)
        if len(col) != self._rows_of[file]:
            raise DataError(f"{self.path / file} holds {len(col)} rows, the manifest records {self._rows_of[file]}")
        if isinstance(col, list):
            return np.array(col, dtype=object)
        if col.dtype == np.uint16:  # float16 bit patterns
            return col.view(np.float16)
        return col

    def _column(self, file: str, name: str) -> np.ndarray:
        if file.endswith(".parquet"):
            return self._parquet_column(file, name)
        lay = self._layout(file)
        if name not in lay["columns"]:
            raise InvalidArgumentError(f"no column '{name}' in this dump; columns: {', '.join(self.columns)}")
        c = lay["columns"][name]
        if c["dtype"] == "utf8":
            raw = np.memmap(self.path / file, dtype=np.uint8, mode="r")
            offs = np.frombuffer(raw, dtype=np.int32, count=lay["rows"] + 1, offset=c["offsets_offset"])
            data = bytes(raw[c["offset"]:c["offset"] + c["nbytes"]])
            return np.array([data[a:b].decode("utf-8") for a, b in zip(offs[:-1], offs[1:])], dtype=object)
        shape = (lay["rows"], c["width"]) if c["width"] > 1 or name in self.metadata["hooks"] else (lay["rows"],)
        if lay["rows"] == 0:
            return np.zeros(shape, dtype=_NP[c["dtype"]])
        return np.memmap(self.path / file, dtype=_NP[c["dtype"]], mode="r", offset=c["offset"], shape=shape)

    def parts(self, name: str) -> Iterator[np.ndarray]:
        """The column ``name`` part by part, each a zero-copy memory map (Arrow parts)."""
        for i in range(len(self.metadata["parts"])):
            yield self.read_part(i, name)

    def read_part(self, index: int, name: str) -> np.ndarray:
        """Column ``name`` of part ``index`` alone (a damaged part does not block the others)."""
        parts = self.metadata["parts"]
        if not 0 <= index < len(parts):
            raise InvalidArgumentError(f"part {index} does not exist; this dump has {len(parts)} parts")
        return self._column(parts[index]["file"], name)

    def __getitem__(self, name: str) -> np.ndarray:
        arrays = list(self.parts(name))
        if not arrays:
            raise DataError(f"{self.path}: the dump has no complete parts")
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    @property
    def prompt_id(self) -> np.ndarray:
        return self["prompt_id"]

    @property
    def position(self) -> np.ndarray:
        return self["position"]

    @property
    def token_id(self) -> np.ndarray:
        return self["token_id"]

    def where(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """Row indices of the given prompts (for ``dump[name][rows]``)."""
        return np.flatnonzero(np.isin(self.prompt_id, np.asarray(prompt_ids)))

    def part_files(self) -> list[Path]:
        return [self.path / p["file"] for p in self.metadata["parts"]]


def load_dump(path: str | os.PathLike[str], verify: bool = False) -> Dump:
    """Open a dump folder written by :func:`dump` (nothing is read until a column is asked for).

    The manifest is checked on opening (its keys and types, and that every part file lies
    inside the folder); each part's row count is checked when it is first read. With
    ``verify=True`` every part's bytes are checked against the CRC-32 in the manifest now (a
    full read of the dump): a part changed on disk is a :class:`DataError` naming it.
    """
    folder = Path(path)
    manifest = _read_manifest(folder)
    if verify:
        for part in manifest["parts"]:
            if "crc32" not in part:
                raise DataError(f"part {part['index']} of {folder} has no checksum (written by an older mindscope); "
                                "it cannot be verified")
            _verify_part(folder, part)
    return Dump(folder, manifest)
