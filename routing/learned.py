"""The learned router's features and inference (plain Python: no Django, no numpy, no I/O).

Per task class, a logistic regression per candidate model predicts the probability that the
model succeeds on a request, from:

- the prompt's word 1- and 2-grams (numbers folded to ``#``), hashed into ``n_features``
  buckets with a signed CRC-32 (the "hashing trick": no vocabulary, nothing downloaded),
  sub-linear counts (1 + log n), L2-normalised;
- the prompt template (``tpl:<id>@<version>``) and the metadata (``meta:<key>=<value>`` for
  short scalar values), hashed into the same buckets with weight 1;
- dense *structure* features after the buckets (``HashingSpec.dense`` names which, in
  order; :data:`STRUCTURE_FEATURES` defines them): log of the prompt's characters, of its
  words and of its numbers; the share of (ASCII) digits, of maths symbols and of Latin
  capitals; lines;
  answer options (lines like ``A. …``, ``(b) …``, ``3) …``: how many, their share of the
  text, their mean length); a negation in capitals ("NOT", "EXCEPT", "LEAST"); code
  markers; a question mark; mean word length; and the question word that opens the
  request's last line before the options ("which", "what", "how", … one indicator each).
  They describe the request's *form*, not its topic, so they mean the same on any task
  class and carry over to sources (domains, templates) the router has not seen, where
  word n-grams mostly name the topic. Each is scaled to about 0–1; training standardises
  them and stores the weights for these raw values.

``HashingSpec.ngram_max`` 0 switches the word n-grams off (template and metadata are still
hashed): the training (``evaluation.services.learned``) chooses between n-grams plus
structure, structure only, and the three length features only by cross-validation grouped
by the requests' source, and stores its choice in the hashing settings.

The parameters are plain data (``LearnedRouterInfo``: coefficients as floats, the hashing
settings, the class threshold and its rule) stored in ``evaluation.LearnedRouter`` as JSON
and trained by ``evaluation.services.learned``; :func:`routing.engine.decide` calls
:func:`predict_success` with them and picks a model by the router's rule
(:func:`learned_choice`):

- ``success``: the cheapest eligible model whose predicted success is at least the
  threshold;
- ``gain``: the cheapest eligible model whose predicted success is at most ``threshold``
  below the best predicted success among the eligible models (the threshold is the
  tolerated loss). Measured on RouteLLM's recorded outcomes this ranks requests better
  than ``success``: a request both models fail gains nothing from the dearer one.

Training and inference share :func:`request_features`, so the features cannot drift apart.
"""

from __future__ import annotations

import math
import re
import zlib
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter, mul
from typing import Any, Final, cast

SCHEME: Final = "crc32-signed-v1"
RULES: Final = ("success", "gain")
# The dense features of the first stored routers (a spec without "dense" has these).
LENGTH_FEATURES: Final = ("log_chars", "log_words", "log_numbers")
QUESTION_WORDS: Final = (
    "which", "what", "how", "why", "who", "when", "where", "find", "calculate", "if", "is",
)  # fmt: skip
STRUCTURE_FEATURES: Final = (
    *LENGTH_FEATURES,
    "digit_share",
    "math_share",
    "upper_share",
    "log_lines",
    "options",
    "option_share",
    "log_option_len",
    "negation",
    "code",
    "question_mark",
    "mean_word_len",
    *(f"q_{w}" for w in QUESTION_WORDS),
)
_QUESTION_FEATURES: Final = STRUCTURE_FEATURES[-len(QUESTION_WORDS) :]  # q_<word>, in order
DENSE_FEATURES: Final = STRUCTURE_FEATURES  # the default spec's
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
_MAX_META_VALUE = 64
# Metadata keys never used as features: the evaluation's reference answers (stored with
# demo and sweep requests) would leak the label into training.
IGNORED_METADATA_KEYS: Final = frozenset({"reference_answer", "reference"})
# The metadata key that names a request's source (a domain, a customer, a feed): training
# cross-validates grouped by it, so its choices hold on sources it has not seen. Not a
# feature: a router must not lean on the name of a source it may never see again.
GROUP_METADATA_KEY: Final = "group"


def learned_template(template: Any) -> str:
    """``<id>@<version>`` of a request's prompt template (anything with ``id`` and
    ``version``), or "" without one: the template feature, same in training and serving."""
    if template is None:
        return ""
    return f"{template.id}@{template.version}"


def template_key(template_id: str, template_version: str) -> str:
    """The same from a stored decision's columns."""
    return f"{template_id}@{template_version}" if template_id else ""


@dataclass(frozen=True, slots=True)
class HashingSpec:
    """How text becomes features; stored with every trained router."""

    n_features: int = 4096
    ngram_max: int = 2  # 0: no word n-grams (template and metadata still hashed)
    scheme: str = SCHEME
    dense: tuple[str, ...] = DENSE_FEATURES  # names from STRUCTURE_FEATURES, in this order

    def as_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "n_features": self.n_features,
            "ngram_max": self.ngram_max,
            "dense": list(self.dense),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HashingSpec:
        if data.get("scheme") != SCHEME:
            raise ValueError(f"unknown feature scheme {data.get('scheme')!r}")
        dense = tuple(str(d) for d in data.get("dense", LENGTH_FEATURES))
        spec = cls(
            n_features=int(data["n_features"]), ngram_max=int(data["ngram_max"]), dense=dense
        )
        if spec.n_features < 16 or not 0 <= spec.ngram_max <= 3:
            raise ValueError("invalid hashing settings")
        if len(set(dense)) != len(dense) or not set(dense) <= set(STRUCTURE_FEATURES):
            raise ValueError(f"unknown or repeated dense features {list(dense)}")
        return spec

    @property
    def width(self) -> int:
        """Length of a weight vector: the buckets, then the dense features."""
        return self.n_features + len(self.dense)


def _bucket(token: str | bytes, n: int) -> tuple[int, float]:
    data = token if isinstance(token, bytes) else token.encode("utf-8", "surrogatepass")
    h = zlib.crc32(data)
    return h % n, (1.0 if h & 0x80000000 else -1.0)


# No cache of the grams' buckets: hashing a short gram again (CRC-32, in C) costs what a
# dictionary lookup does when the CPU caches are warm, and much less when they are not —
# on the decision path, between requests, they are not (measured: bench/decision_cpu.py).
_LOG1P_COUNT = tuple(1.0 + math.log(c) if c else 0.0 for c in range(64))
# ASCII: every byte but a letter or digit separates words — what _TOKEN finds in ASCII text.
_ASCII_SEPARATORS = bytes(
    b if chr(b).isascii() and chr(b).isalnum() else ord(" ") for b in range(256)
)


def _grams(tokens: Sequence[str | bytes], ngram_max: int) -> dict[str | bytes, int]:
    """Counts of the 1..ngram_max-grams, in order of first appearance (unigrams first)."""
    counts: Counter[str | bytes] = Counter(tokens)
    if tokens and isinstance(tokens[0], bytes):
        join: Any = b" ".join
    else:
        join = " ".join
    for n in range(2, ngram_max + 1):
        counts.update(map(join, zip(*(tokens[i:] for i in range(n)), strict=False)))
    return counts


def _encoded(grams: Iterable[str]) -> Iterator[bytes]:
    for gram in grams:
        yield gram.encode("utf-8", "surrogatepass")


def request_features(
    spec: HashingSpec,
    prompt: str | None,
    *,
    template: str = "",
    metadata: Mapping[str, Any] | None = None,
) -> dict[int, float]:
    """Sparse feature vector {index: value} of one request (see the module docstring)."""
    text = (prompt or "").casefold()
    words: list[str] | list[bytes]
    number: str | bytes
    if text.isascii():  # the words _TOKEN finds, several times faster than the expression
        words, number = text.encode("ascii").translate(_ASCII_SEPARATORS).split(), b"#"
    else:
        words, number = _TOKEN.findall(text), "#"
    # Numbers are [0-9]+ only (isdigit alone would take other scripts' digits too).
    tokens = [number if w.isdigit() and w.isascii() else w for w in words]
    counts = _grams(tokens, spec.ngram_max) if spec.ngram_max else {}
    if isinstance(number, bytes):
        keys = cast(Iterable[bytes], counts)
    else:
        keys = _encoded(cast(Iterable[str], counts))
    buckets: dict[int, float] = {}
    size = spec.n_features
    crc32, buckets_get, logs = zlib.crc32, buckets.get, _LOG1P_COUNT
    for data, count in zip(keys, counts.values(), strict=True):
        h = crc32(data)
        index = h % size
        weight = logs[count] if count < 64 else 1.0 + math.log(count)
        buckets[index] = buckets_get(index, 0.0) + (weight if h & 0x80000000 else -weight)
    counted = buckets.values()
    norm = math.sqrt(sum(map(mul, counted, counted)))  # the same sum as a loop's, in C
    if norm > 0:  # a comprehension (inlined, PEP 709) beats dict(zip(map(truediv, …)))
        buckets = {index: value / norm for index, value in buckets.items()}
    extra = []
    if template:
        extra.append(f"tpl:{template}")
    if metadata:
        for key, value in metadata.items():
            if key in IGNORED_METADATA_KEYS or key == GROUP_METADATA_KEY:
                continue
            if isinstance(value, bool | int | float) or (
                isinstance(value, str) and len(value) <= _MAX_META_VALUE
            ):
                extra.append(f"meta:{key}={value}")
    for token in extra:
        index, sign = _bucket(token, size)
        buckets[index] = buckets.get(index, 0.0) + sign
    numbers = tokens.count(number)  # "#" is never a word itself (_TOKEN)
    lengths = {
        "log_chars": math.log1p(len(text)) / 10.0,
        "log_words": math.log1p(len(words)) / 8.0,
        "log_numbers": math.log1p(numbers) / 4.0,
    }
    if spec.dense == LENGTH_FEATURES:
        values = lengths
    else:
        values = structure_features(prompt or "", len(words))
        values.update(lengths)
    for offset, name in enumerate(spec.dense):
        value = values[name]
        if value or name in lengths:  # the length features are always present
            buckets[size + offset] = value
    return buckets


_OPTION = re.compile(r"^[ \t]*(?:\(?[A-Ha-h]|\(?[1-9])[.)][ \t]+(\S.*)$", re.M)
_NEGATION_WORDS = ("NOT", "EXCEPT", "LEAST", "FALSE", "INCORRECT", "NEVER")
_NEGATION = re.compile(r"\b(?:" + "|".join(_NEGATION_WORDS) + r")\b")
_CODE = re.compile(r"```|\bdef |\breturn\b|;[ \t]*$|[{}]|\bprint\(|#include|</?[a-z]+>", re.M)
# Every match of _CODE contains one of these: a text with none of them cannot match, and
# substring searches (in C) say so many times faster than the expression's scan.
_CODE_HINTS = ("```", "def ", "return", ";", "{", "}", "print(", "#include", "<")


def _matches(pattern: re.Pattern[str], hints: Sequence[str], text: str) -> bool:
    """``pattern.search(text)``, skipped when ``text`` holds none of ``hints`` (literals one
    of which every match contains)."""
    return any(map(text.__contains__, hints)) and pattern.search(text) is not None


_ASCII_MATH = b"+-*/=^<>%"
_OTHER_MATH = re.compile("[√∑∫≤≥×÷]")
_DIGITS = b"0123456789"
_CAPITALS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_QUESTION_WORD = re.compile(r"\b(" + "|".join(QUESTION_WORDS) + r")\b")
# ASCII: every byte but a letter, digit or underscore (a word character) becomes a space.
_ASCII_NON_WORD = bytes(
    b if (chr(b).isascii() and chr(b).isalnum()) or chr(b) == "_" else ord(" ") for b in range(256)
)
_ASCII_QUESTION_WORDS = {w.encode("ascii"): w for w in QUESTION_WORDS}


def question_opener(line: str) -> str:
    """The first of ``QUESTION_WORDS`` that stands as a whole word in ``line`` (casefolded),
    or "": what ``_QUESTION_WORD`` finds.

    In ASCII text without the expression: its match is a whole run of word characters
    (a boundary on both sides), so the answer is the earliest of the runs that is a
    question word — the runs split in C, the question words among them found by a set
    intersection. On a long line that is half the expression's cost, which tries every
    alternative at every position (measured: bench/decision_cpu.py prompts)."""
    if not line.isascii():
        found = _QUESTION_WORD.search(line)
        return found.group(1) if found else ""
    runs = line.encode("ascii").translate(_ASCII_NON_WORD).split()
    hits = _ASCII_QUESTION_WORDS.keys() & runs
    return _ASCII_QUESTION_WORDS[min(hits, key=runs.index)] if hits else ""


def structure_features(prompt: str, words: int) -> dict[str, float]:
    """The form of a request (see the module docstring), each about 0–1; ``words``: the
    number of words (the tokens of the n-grams). The length features are added by
    :func:`request_features`."""
    n = len(prompt) or 1
    # Counted on the UTF-8 bytes (in C): ASCII digits, Latin capitals, ASCII maths symbols
    # (and a few others by an expression when the text is not ASCII).
    data = prompt.encode("utf-8", "surrogatepass")
    digits = len(data) - len(data.translate(None, _DIGITS))
    upper = len(data) - len(data.translate(None, _CAPITALS))
    maths = len(data) - len(data.translate(None, _ASCII_MATH))
    if not prompt.isascii():
        maths += len(_OTHER_MATH.findall(prompt))
    found = list(_OPTION.finditer(prompt))  # one scan for the options and the first's start
    options = [m.group(1) for m in found]
    option_chars = sum(map(len, options))
    stem = prompt[: found[0].start()] if found else prompt
    opener = question_opener(stem.strip().rpartition("\n")[2].casefold())
    out = {
        "digit_share": min(1.0, 5.0 * digits / n),
        "math_share": min(1.0, 10.0 * maths / n),
        "upper_share": min(1.0, 5.0 * upper / n),
        "log_lines": math.log1p(prompt.count("\n")) / 4.0,
        "options": min(len(options), 10) / 5.0,
        "option_share": option_chars / n,
        "log_option_len": math.log1p(option_chars / len(options)) / 6.0 if options else 0.0,
        "negation": 1.0 if _matches(_NEGATION, _NEGATION_WORDS, prompt) else 0.0,
        "code": 1.0 if _matches(_CODE, _CODE_HINTS, prompt) else 0.0,
        "question_mark": 1.0 if "?" in prompt else 0.0,
        "mean_word_len": min(1.0, (len(prompt) - prompt.count(" ")) / words / 10.0)
        if words
        else 0.0,
    }
    out.update(dict.fromkeys(_QUESTION_FEATURES, 0.0))
    if opener:
        out[f"q_{opener}"] = 1.0
    return out


@dataclass(frozen=True, slots=True)
class LearnedModel:
    """P(success) of one model: sigmoid(intercept + weights · features)."""

    slug: str
    intercept: float
    # Any sequence of floats; :func:`learned_router_from_data` gives a read-only view of the
    # router's shared table (:func:`weights_table`).
    weights: Sequence[float]


@dataclass(frozen=True, slots=True)
class LearnedRouterInfo:
    """A trained router as the engine uses it (from ``evaluation.LearnedRouter``)."""

    task_class: str
    version: int
    spec: HashingSpec
    threshold: float
    models: tuple[LearnedModel, ...]
    rule: str = "success"  # one of RULES

    def model(self, slug: str) -> LearnedModel | None:
        for m in self.models:
            if m.slug == slug:
                return m
        return None


def weights_table(vectors: Sequence[Sequence[float]]) -> list[Sequence[float]]:
    """The weight vectors (all of one length) as read-only views of one table of doubles,
    interleaved: the weights of every model for feature ``i`` are adjacent in memory.

    A prediction reads the weights of the request's features only (a few hundred of the
    thousands), for every model. As tuples of float objects each such weight was a pointer
    to follow to an object elsewhere, for each model: about a thousand cache misses per
    request, as the rest of a request's work evicts the tables between two of them. Here
    one cache line holds a feature's weights for all models. The values are the same
    doubles, so the predictions are unchanged."""
    count = len(vectors)
    if not count:
        return []
    width = len(vectors[0])
    table = array("d", bytes(8 * width * count))
    for j, vector in enumerate(vectors):
        table[j::count] = array("d", vector)
    shared = memoryview(table).toreadonly()
    return [cast(Sequence[float], shared[j::count]) for j in range(count)]


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _weights_of(features: Mapping[int, float]) -> Callable[[Sequence[float]], Sequence[float]]:
    """The weights of ``features``' indices from a weight vector, in one C call."""
    indices = tuple(features)
    if len(indices) == 1:
        index = indices[0]
        return lambda weights: (weights[index],)
    return cast(Callable[[Sequence[float]], Sequence[float]], itemgetter(*indices))


def predict_one(model: LearnedModel, features: Mapping[int, float]) -> float:
    if not features:
        return sigmoid(model.intercept)
    weights = _weights_of(features)(model.weights)
    return sigmoid(model.intercept + math.sumprod(weights, features.values()))


def predict_success(router: LearnedRouterInfo, features: Mapping[int, float]) -> dict[str, float]:
    """Predicted success probability of every model the router knows (the feature indices
    looked up once for all of them)."""
    if not features:
        return {m.slug: round(sigmoid(m.intercept), 4) for m in router.models}
    weights_of, values = _weights_of(features), tuple(features.values())
    return {
        m.slug: round(sigmoid(m.intercept + math.sumprod(weights_of(m.weights), values)), 4)
        for m in router.models
    }


def learned_router_from_data(
    *,
    task_class: str,
    version: int,
    hashing: Mapping[str, Any],
    threshold: float,
    coefficients: Mapping[str, Mapping[str, Any]],
    rule: str = "success",
) -> LearnedRouterInfo:
    """Check stored parameters (plain JSON data) and build the engine's router.
    Raises ValueError for anything malformed: wrong vector length, non-finite numbers."""
    spec = HashingSpec.from_dict(hashing)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold {threshold} outside 0–1")
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}")
    checked: list[tuple[str, float, list[float]]] = []
    for slug, coef in sorted(coefficients.items()):
        weights = [float(w) for w in coef["weights"]]
        intercept = float(coef["intercept"])
        if len(weights) != spec.width:
            raise ValueError(f"{slug}: {len(weights)} weights, expected {spec.width}")
        if not all(math.isfinite(w) for w in weights) or not math.isfinite(intercept):
            raise ValueError(f"{slug}: non-finite coefficient")
        checked.append((slug, intercept, weights))
    views = weights_table([w for _, _, w in checked])
    models = [
        LearnedModel(slug=slug, intercept=intercept, weights=view)
        for (slug, intercept, _), view in zip(checked, views, strict=True)
    ]
    return LearnedRouterInfo(
        task_class=task_class,
        version=version,
        spec=spec,
        threshold=float(threshold),
        models=tuple(models),
        rule=rule,
    )


def learned_choice(
    router: LearnedRouterInfo, predicted: Mapping[str, float], ladder: Sequence[str]
) -> str | None:
    """The model the router's rule picks from ``ladder`` (eligible models, cheapest first),
    or None when none qualifies (the caller then takes the strongest)."""
    known = [s for s in ladder if s in predicted]
    if router.rule == "gain":
        if not known:
            return None
        floor = max(predicted[s] for s in known) - router.threshold
    else:
        floor = router.threshold
    return next((s for s in known if predicted[s] >= floor), None)


# --------------------------------------------------------------------------------------------
# Calibrating the threshold to a target
# --------------------------------------------------------------------------------------------

THRESHOLD_GRID: Final = tuple(i / 100 for i in range(101))


@dataclass(frozen=True, slots=True)
class ThresholdPoint:
    """What a threshold would do to a set of requests."""

    threshold: float
    strongest_share: float  # share routed to the last (strongest) model of the ladder
    expected_success: float  # mean predicted success of the chosen models
    mean_cost: float  # mean relative cost of the chosen models


def threshold_curve(
    router: LearnedRouterInfo,
    predictions: Sequence[Mapping[str, float]],
    ladder: Sequence[str],
    costs: Mapping[str, float],
    fallback_success: Mapping[str, float],
    grid: Sequence[float] = THRESHOLD_GRID,
) -> list[ThresholdPoint]:
    """Every threshold of ``grid`` applied to the requests' predicted successes
    (``ladder``: the route's models, cheapest first). A model the router has no prediction
    for counts with ``fallback_success`` (its calibrated class estimate)."""
    n = max(1, len(predictions))
    out = []
    for t in grid:
        probe = LearnedRouterInfo(
            router.task_class, router.version, router.spec, t, (), router.rule
        )
        strongest = 0
        success = 0.0
        cost = 0.0
        for p in predictions:
            chosen = learned_choice(probe, p, ladder) or ladder[-1]
            strongest += chosen == ladder[-1]
            success += p.get(chosen, fallback_success.get(chosen, 0.0))
            cost += costs.get(chosen, 0.0)
        out.append(ThresholdPoint(t, strongest / n, success / n, cost / n))
    return out


def threshold_for_target(
    points: Sequence[ThresholdPoint], *, kind: str, target: float
) -> tuple[ThresholdPoint, bool]:
    """The point of ``points`` that meets the target, and whether it is met.

    - ``strong_share``: the share on the strongest model closest to ``target`` (ties: the
      cheaper, then the threshold nearer the middle of the grid's range); met within 0.02.
    - ``quality``: the cheapest point whose expected success is at least ``target``
      (ties: the higher expected success); none: the one with the highest expected
      success, not met."""
    if not points:
        raise ValueError("no thresholds to choose from")
    if kind == "strong_share":
        best = min(
            points,
            key=lambda p: (round(abs(p.strongest_share - target), 6), p.mean_cost, p.threshold),
        )
        return best, abs(best.strongest_share - target) <= 0.02
    if kind == "quality":
        meeting = [p for p in points if p.expected_success >= target]
        if meeting:
            return min(meeting, key=lambda p: (p.mean_cost, -p.expected_success)), True
        return max(points, key=lambda p: (p.expected_success, -p.mean_cost)), False
    raise ValueError(f"unknown target kind {kind!r}")
