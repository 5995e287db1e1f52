"""Semantic routing: routes defined by example utterances (plain Python + numpy, no Django).

A task class whose route has strategy ``semantic`` carries *semantic routes*: a name, the
model it sends to, a similarity threshold and example utterances. A request's prompt is
embedded, compared (cosine) with every example, and each route scores the highest
similarity among its examples. The best-scoring route wins if its score is at least its
threshold and its model is eligible for the request (``routing.engine``); otherwise the
route's rule decides, and the decision's reason says why.

Embedding backends are pluggable (:class:`EmbeddingBackend`):

- ``hashed`` (default, nothing to download): TF-IDF over character 3–5-grams (of the UTF-8
  bytes) of the casefolded, NFKC-normalised words (word boundaries marked), hashed (a
  vectorised 64-bit rolling hash) into ``dim`` buckets; sub-linear term frequency per
  bucket; the IDF is fitted on the class's own example utterances (a gram every route
  shares weighs little);
  L2-normalised. Character grams make "refund", "refunds" and "refunded" close without any
  stemming. Only the first :data:`MAX_CHARS` characters are embedded.
- ``sentence-transformers:<local path>``: a sentence-transformers model loaded from a local
  directory (imported lazily; not a dependency of the project, and never downloaded here).

Settings name the backend (``SWITCHYARD_SEMANTIC_BACKEND``); the snapshot builds one
:class:`SemanticRouterInfo` per class when the registry changes, so a decision only embeds
its prompt and takes one matrix-vector product.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import numpy as np

HASHED: Final = "hashed"
ST_PREFIX: Final = "sentence-transformers:"
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# Only the start of a long prompt is embedded: what a request is about is said early, and
# the cost of a decision stays bounded.
MAX_CHARS: Final = 1000
_PRIME: Final = np.uint64(0x100000001B3)  # FNV-1a's 64-bit prime, as the rolling multiplier
_MIX: Final = np.uint64(0xFF51AFD7ED558CCD)  # murmur3's fmix64 constant
_SHIFT: Final = np.uint64(33)
_SEED: Final = np.uint64(0xCBF29CE484222325)  # FNV-1a's offset basis: n-grams of each length differ
_SPACE: Final = np.uint64(ord(" "))
# ASCII bytes that are not letters or digits become spaces (``_WORD`` on ASCII text).
_ASCII_NON_WORD: Final = bytes(
    c if chr(c).isascii() and chr(c).isalnum() else ord(" ") for c in range(256)
)


class EmbeddingBackend(Protocol):
    """Turns texts into L2-normalised vectors (one row per text)."""

    name: str

    def fit(self, corpus: Sequence[str]) -> None: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class HashedTfidf:
    """The default backend (see the module docstring)."""

    name = HASHED

    def __init__(self, dim: int = 4096, ngram_min: int = 3, ngram_max: int = 5) -> None:
        self.dim = dim
        self.ngram_min = ngram_min
        self.ngram_max = ngram_max
        self.idf = np.ones(dim, dtype=np.float32)

    def _hashes(self, text: str) -> np.ndarray:
        """A 64-bit hash of every n-gram of the text's marked words (UTF-8 bytes: one
        character per byte for ASCII text), all n-grams at once: the words are joined as
        `` w1  w2 `` and a polynomial rolling hash runs over the bytes; an n-gram counts
        only if it lies inside one marked word; a murmur-style finaliser makes ``% dim``
        spread them."""
        normal = unicodedata.normalize("NFKC", text[:MAX_CHARS]).casefold()
        if normal.isascii():  # the same words as _WORD, an order of magnitude faster
            words = normal.encode("ascii").translate(_ASCII_NON_WORD).split()
        else:
            words = [w.encode("utf-8", "surrogatepass") for w in _WORD.findall(normal)]
        if not words:
            return np.empty(0, dtype=np.uint64)
        lo, hi = self.ngram_min, self.ngram_max
        joined = b" " + b"  ".join(words) + b" "
        size = len(joined)
        data = np.zeros(size + hi, dtype=np.uint64)
        data[:size] = np.frombuffer(joined, dtype=np.uint8)
        # Word number of every byte: a new word starts at the second of two spaces.
        starts = np.zeros(size + hi, dtype=np.int64)
        starts[1:size] = (data[1:size] == _SPACE) & (data[: size - 1] == _SPACE)
        word_of = np.cumsum(starts)
        word_of[size:] = -1  # padding: no n-gram reaches into it
        m = size - lo + 1
        if m <= 0:
            return np.empty(0, dtype=np.uint64)
        h = np.full(m, _SEED, dtype=np.uint64)
        grams = []
        for n in range(1, hi + 1):
            h = h * _PRIME + data[n - 1 : n - 1 + m]
            if n >= lo:
                grams.append(h[word_of[:m] == word_of[n - 1 : n - 1 + m]])
        out = np.concatenate(grams)
        out ^= out >> _SHIFT
        out *= _MIX
        out ^= out >> _SHIFT
        return out

    def _counts(self, text: str) -> np.ndarray:
        """Sub-linear term frequency (1 + log count) per bucket."""
        hashes = self._hashes(text)
        if not len(hashes):
            return np.zeros(self.dim, dtype=np.float32)
        counts = np.bincount(
            (hashes % np.uint64(self.dim)).astype(np.intp), minlength=self.dim
        ).astype(np.float32)
        seen = counts > 0
        counts[seen] = 1.0 + np.log(counts[seen])
        return counts

    def fit(self, corpus: Sequence[str]) -> None:
        df = np.zeros(self.dim, dtype=np.float32)
        for text in corpus:
            df += self._counts(text) > 0
        n = float(len(corpus))
        self.idf = (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row] = self._counts(text)
        out *= self.idf
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out


_st_models: dict[str, Any] = {}
_st_lock = threading.Lock()


class SentenceTransformerBackend:
    """A sentence-transformers model from a local directory (loaded once per process)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = f"{ST_PREFIX}{path}"

    def _model(self) -> Any:
        with _st_lock:
            model = _st_models.get(self.path)
            if model is None:
                try:
                    from sentence_transformers import SentenceTransformer
                except ImportError as exc:
                    raise ValueError(
                        "the sentence-transformers backend needs the sentence-transformers "
                        "package installed (it is not a dependency of Switchyard)"
                    ) from exc
                model = SentenceTransformer(self.path, local_files_only=True)
                _st_models[self.path] = model
            return model

    def fit(self, corpus: Sequence[str]) -> None:
        return None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self._model().encode(
            [t[:MAX_CHARS] for t in texts], normalize_embeddings=True, convert_to_numpy=True
        )
        return np.asarray(vectors, dtype=np.float32)


def backend_factory(setting: str) -> Callable[[], EmbeddingBackend]:
    """A factory of fresh backends (each router fits its own) from the setting's value:
    ``hashed`` or ``sentence-transformers:<local path>``."""
    value = (setting or HASHED).strip()
    if value == HASHED:
        return HashedTfidf
    if value.startswith(ST_PREFIX) and value[len(ST_PREFIX) :].strip():
        path = value[len(ST_PREFIX) :].strip()
        return lambda: SentenceTransformerBackend(path)
    raise ValueError(f"unknown semantic backend {setting!r} (hashed | sentence-transformers:PATH)")


# --------------------------------------------------------------------------------------------
# Routers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SemanticRoute:
    name: str
    model: str  # model slug
    threshold: float  # minimum cosine similarity
    utterances: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SemanticMatch:
    """The best route for a request, and every route's score (highest similarity)."""

    route: SemanticRoute
    score: float
    scores: tuple[tuple[str, float], ...]

    @property
    def matched(self) -> bool:
        return self.score >= self.route.threshold


@dataclass(frozen=True, slots=True, eq=False)
class SemanticRouterInfo:
    """A class's semantic routes with their examples embedded (build with
    :func:`semantic_router_build`)."""

    task_class: str
    routes: tuple[SemanticRoute, ...]
    backend: EmbeddingBackend = field(repr=False)
    # The embedded utterances, transposed: one row per dimension, one column per utterance.
    examples_t: np.ndarray = field(repr=False)
    owner: np.ndarray = field(repr=False)  # route index of every row

    def match(self, text: str | None) -> SemanticMatch | None:
        """The route whose examples are most similar to ``text`` (None without a prompt or
        routes)."""
        if not text or not self.routes:
            return None
        query = self.backend.embed([text])[0]
        # Only the query's non-zero dimensions, summed by einsum's own loop: a BLAS
        # matrix-vector product is faster alone but starts OpenBLAS threads, whose
        # contention on a busy host put the p99 at 12 ms (bench/bench_strategies.py).
        nz = np.flatnonzero(query)
        similarity = np.einsum("ji,j->i", self.examples_t[nz], query[nz])
        best = np.full(len(self.routes), -1.0, dtype=np.float32)
        np.maximum.at(best, self.owner, similarity)
        top = int(np.argmax(best))
        scores = tuple((r.name, round(float(s), 4)) for r, s in zip(self.routes, best, strict=True))
        return SemanticMatch(self.routes[top], round(float(best[top]), 4), scores)


def semantic_router_build(
    task_class: str,
    routes: Sequence[SemanticRoute],
    backend: EmbeddingBackend,
) -> SemanticRouterInfo:
    """Fit the backend on the routes' utterances and embed them. Raises ValueError for a
    route without utterances, a threshold outside 0–1 or duplicate names."""
    names = [r.name for r in routes]
    if len(set(names)) != len(names):
        raise ValueError(f"{task_class}: duplicate semantic route names")
    for r in routes:
        if not r.utterances or not any(u.strip() for u in r.utterances):
            raise ValueError(f"{task_class}/{r.name}: a semantic route needs example utterances")
        if not 0.0 <= r.threshold <= 1.0:
            raise ValueError(f"{task_class}/{r.name}: threshold {r.threshold} outside 0–1")
    texts = [u for r in routes for u in r.utterances if u.strip()]
    owner = np.asarray(
        [i for i, r in enumerate(routes) for u in r.utterances if u.strip()], dtype=np.int64
    )
    backend.fit(texts)
    examples = backend.embed(texts)
    return SemanticRouterInfo(
        task_class=task_class,
        routes=tuple(routes),
        backend=backend,
        examples_t=np.ascontiguousarray(examples.T),
        owner=owner,
    )
