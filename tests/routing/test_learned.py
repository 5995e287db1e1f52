"""routing.learned (features, stored parameters, inference) and learned routing in the
engine: cheapest model predicted to clear the threshold, across three tiers."""

from __future__ import annotations

import json
import math

import pytest

from routing.engine import (
    DecisionRequest,
    ModelInfo,
    RouteInfo,
    TaskClassInfo,
    decide,
    snapshot_build,
)
from routing.learned import (
    LENGTH_FEATURES,
    STRUCTURE_FEATURES,
    HashingSpec,
    LearnedRouterInfo,
    learned_router_from_data,
    predict_success,
    request_features,
    sigmoid,
)

SPEC = HashingSpec(n_features=256)
LENGTHS = HashingSpec(n_features=256, dense=LENGTH_FEATURES)  # the first routers' features


def _reference_features(spec: HashingSpec, prompt: str) -> dict[int, float]:
    """The feature definition written plainly (module docstring of routing.learned): stored
    routers were trained on exactly these values, so a faster implementation must match."""
    import re
    import zlib

    text = prompt.casefold()
    words = re.findall(r"[^\W_]+", text)
    tokens = ["#" if re.fullmatch(r"[0-9]+", w) else w for w in words]
    counts: dict[str, int] = {}
    for n in range(1, spec.ngram_max + 1):
        for i in range(len(tokens) - n + 1):
            gram = " ".join(tokens[i : i + n])
            counts[gram] = counts.get(gram, 0) + 1
    buckets: dict[int, float] = {}
    for gram, count in counts.items():
        h = zlib.crc32(gram.encode("utf-8", "surrogatepass"))
        index, sign = h % spec.n_features, (1.0 if h & 0x80000000 else -1.0)
        buckets[index] = buckets.get(index, 0.0) + sign * (1.0 + math.log(count))
    norm = math.sqrt(sum(v * v for v in buckets.values()))
    if norm > 0:
        buckets = {i: v / norm for i, v in buckets.items()}
    numbers = sum(1 for t in tokens if t == "#")
    size = spec.n_features
    dense = {
        "log_chars": math.log1p(len(text)) / 10.0,
        "log_words": math.log1p(len(words)) / 8.0,
        "log_numbers": math.log1p(numbers) / 4.0,
        **_reference_structure(prompt, len(words)),
    }
    for offset, name in enumerate(spec.dense):
        if dense[name] or name in LENGTH_FEATURES:
            buckets[size + offset] = dense[name]
    return buckets


def _reference_structure(prompt: str, words: int) -> dict[str, float]:
    """The structure features written plainly (routing.learned's module docstring)."""
    import re

    n = len(prompt) or 1
    options = [
        m.group(1)
        for line in prompt.split("\n")
        if (m := re.match(r"[ \t]*\(?(?:[A-Ha-h]|[1-9])[.)][ \t]+(\S.*)$", line))
    ]
    lines = prompt.split("\n")
    first = next(
        (
            i
            for i, line in enumerate(lines)
            if re.match(r"[ \t]*\(?(?:[A-Ha-h]|[1-9])[.)][ \t]+\S", line)
        ),
        len(lines),
    )
    stem_lines = [line for line in "\n".join(lines[:first]).strip().split("\n")]
    last = stem_lines[-1].casefold() if stem_lines else ""
    opener = re.search(r"\b(which|what|how|why|who|when|where|find|calculate|if|is)\b", last)
    out = {
        "digit_share": min(1.0, 5 * sum(c in "0123456789" for c in prompt) / n),
        "math_share": min(1.0, 10 * sum(c in "+-*/=^<>%√∑∫≤≥×÷" for c in prompt) / n),
        "upper_share": min(1.0, 5 * sum("A" <= c <= "Z" for c in prompt) / n),
        "log_lines": math.log1p(prompt.count("\n")) / 4,
        "options": min(len(options), 10) / 5,
        "option_share": sum(len(o) for o in options) / n,
        "log_option_len": (
            math.log1p(sum(len(o) for o in options) / len(options)) / 6 if options else 0.0
        ),
        "negation": float(bool(re.search(r"\b(NOT|EXCEPT|LEAST|FALSE|INCORRECT|NEVER)\b", prompt))),
        "code": float(
            bool(
                re.search(
                    r"```|\bdef |\breturn\b|;[ \t]*$|[{}]|\bprint\(|#include|</?[a-z]+>",
                    prompt,
                    re.M,
                )
            )
        ),
        "question_mark": float("?" in prompt),
        "mean_word_len": min(1.0, (len(prompt) - prompt.count(" ")) / words / 10) if words else 0.0,
    }
    first_word = opener.group(1) if opener else ""
    for w in "which what how why who when where find calculate if is".split():
        out[f"q_{w}"] = float(first_word == w)
    return out


HAND_MADE = [
    "",
    "Add 12 and 30, then 12 and 30 again",
    "snake_case & CamelCase: e-mail a.b@c.d!? 3.14 v2 __init__ 007",  # ASCII path
    "naïve café ² ٣ 007 x_y e-mail ＠ 零 data data data data",
    " ".join(["refund order printer"] * 80),  # counts past the cached logarithms
    "Which of these is NOT a prime?\nA. 2\nB. 9\n(c) 11\n4) x = y + 1; print(x)\nAnswer:",
    "  Calculate 3×4 ≤ √20.\n\nFind x: 2x+1=7 {code}",
]


@pytest.mark.parametrize(
    "spec",
    [
        SPEC,
        LENGTHS,
        HashingSpec(n_features=64, ngram_max=3),
        HashingSpec(n_features=64, ngram_max=0),
    ],
)
def test_features_match_their_plain_definition(spec: HashingSpec) -> None:
    for prompt in HAND_MADE * 2:  # the second round comes from the bucket cache
        assert request_features(spec, prompt) == _reference_features(spec, prompt)


def test_features_of_project_prompts_match_their_plain_definition() -> None:
    """On the project's generated prompts (the workload of every task class: numbers,
    question words, code, several lines; and the same run together as long one-line
    prompts, the decision benchmark's shape) and the hand-made ones of the test above: the
    same features in the same order as the plain definition, so the same predictions to
    the last bit."""
    import random

    from evaluation.workload import TASK_CLASSES, workload_items

    rng = random.Random(11)
    stored = {slug: [rng.gauss(0, 1) for _ in range(SPEC.width)] for slug in ("a", "b", "c")}
    router = learned_router_from_data(
        task_class="qa", version=1, hashing=SPEC.as_dict(), threshold=0.5,
        coefficients={s: {"intercept": 0.1, "weights": w} for s, w in stored.items()},
    )  # fmt: skip
    exercised: set[str] = set()
    prompts = [item.prompt for c in TASK_CLASSES for item in workload_items(c, size=25)]
    prompts += [" ".join(prompts[i : i + 4]).replace("\n", " ") for i in range(0, 200, 4)]
    prompts += HAND_MADE
    for prompt in prompts:
        features = request_features(SPEC, prompt)
        reference = _reference_features(SPEC, prompt)
        assert list(features.items()) == list(reference.items()), prompt
        assert predict_success(router, features) == predict_success(router, reference)
        exercised.update(n for i, n in enumerate(SPEC.dense) if features.get(SPEC.n_features + i))
    assert {"q_how", "q_which", "options", "code", "negation"} <= exercised  # forms exercised


def test_question_opener_is_the_first_question_word_the_expression_finds() -> None:
    """``question_opener`` (split runs for ASCII text) answers what the expression
    ``\\b(which|what|…)\\b`` does, on lines built from the question words, their near
    misses (inside longer words, next to digits and underscores) and separators."""
    import random
    import re

    from routing.learned import QUESTION_WORDS, question_opener

    pattern = re.compile(r"\b(which|what|how|why|who|when|where|find|calculate|if|is)\b")
    pieces = [
        *QUESTION_WORDS, "whichever", "this", "iff", "_is", "is_", "2if", "if2", "how's",
        "what-if", "  ", " ", "\t", ".", "?", "-", "_", "7", "x", "é", "ıs", "naïve", "\u00a0",
    ]  # fmt: skip
    rng = random.Random(4)
    found = 0
    for _ in range(5000):
        line = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 9)))
        match = pattern.search(line)
        expected = match.group(1) if match else ""
        assert question_opener(line) == expected, line
        found += bool(expected)
    assert 1000 < found < 4500  # both answers are exercised


def test_features_are_deterministic_sparse_and_normalised() -> None:
    a = request_features(SPEC, "Add 12 and 30, then double it", template="t@1")
    b = request_features(SPEC, "Add 12 and 30, then double it", template="t@1")
    assert a == b
    text = {i: v for i, v in a.items() if i < SPEC.n_features}
    assert all(0 <= i < SPEC.width for i in a)
    # Numbers are folded: other numbers, same n-grams (the dense counts too).
    c = request_features(SPEC, "Add 45 and 99, then double it", template="t@1")
    assert c == a
    # Another template moves one bucket; the text part is L2-normalised before it.
    d = request_features(SPEC, "Add 12 and 30, then double it", template="u@1")
    assert d != a
    plain = request_features(SPEC, "Add 12 and 30, then double it")
    norm = math.sqrt(sum(v * v for i, v in plain.items() if i < SPEC.n_features))
    assert norm == pytest.approx(1.0)
    assert len(text) > 5
    # Longer prompts with more numbers: larger dense features.
    long = request_features(SPEC, " ".join(["add 5"] * 40))
    assert long[SPEC.n_features] > a[SPEC.n_features]
    assert long[SPEC.n_features + 2] > a[SPEC.n_features + 2]


def test_reference_answers_in_metadata_are_never_features() -> None:
    base = request_features(SPEC, "x", metadata={"source": "demo"})
    leaked = request_features(
        SPEC, "x", metadata={"source": "demo", "reference_answer": "42", "reference": "y"}
    )
    assert base == leaked
    assert request_features(SPEC, "x", metadata={"team": "a"}) != request_features(SPEC, "x")


def _coefficients(width: int, hard_weight: float, intercept: float) -> dict[str, object]:
    weights = [0.0] * width
    index = request_features(SPEC, "hard")
    for i, v in index.items():
        if i < SPEC.n_features and v:
            weights[i] = hard_weight / v
    return {"intercept": intercept, "weights": weights}


def _router(threshold: float = 0.8, rule: str = "success") -> LearnedRouterInfo:
    data = {
        # the local model: good on easy requests, poor when the prompt says "hard"
        "local": _coefficients(SPEC.width, -4.0, 2.5),
        # the mid model: good unless hard, then about 0.82
        "mid": _coefficients(SPEC.width, -1.7, 3.2),
    }
    stored = json.loads(json.dumps(data))  # what the database holds: plain JSON
    return learned_router_from_data(
        task_class="qa",
        version=3,
        hashing=SPEC.as_dict(),
        threshold=threshold,
        coefficients=stored,
        rule=rule,
    )


def test_router_keeps_the_stored_weights_and_predicts_from_them() -> None:
    """The engine's router holds the stored weights (as one shared, read-only table): the
    same values, and the predictions are the logistic model over them."""
    import random

    rng = random.Random(3)
    intercepts = {slug: rng.gauss(0, 1) for slug in ("a", "b", "c")}
    stored = {slug: [rng.gauss(0, 1) for _ in range(SPEC.width)] for slug in intercepts}
    coefficients = {s: {"intercept": intercepts[s], "weights": stored[s]} for s in intercepts}
    router = learned_router_from_data(
        task_class="qa", version=1, hashing=SPEC.as_dict(), threshold=0.5,
        coefficients=json.loads(json.dumps(coefficients)),
    )  # fmt: skip
    for model in router.models:
        assert list(model.weights) == stored[model.slug]
        with pytest.raises(TypeError):
            model.weights[0] = 1.0  # type: ignore[index]
    features = request_features(SPEC, "Refund order 1234 twice, then refund it again")
    predicted = predict_success(router, features)
    for slug, weights in stored.items():
        z = intercepts[slug] + math.sumprod([weights[i] for i in features], features.values())
        assert predicted[slug] == round(sigmoid(z), 4)


def test_stored_parameters_are_checked() -> None:
    router = _router()
    assert [m.slug for m in router.models] == ["local", "mid"]
    p = predict_success(router, request_features(SPEC, "hard"))
    assert p["local"] < 0.25 and 0.75 < p["mid"] < 0.9
    good = {"intercept": 0.0, "weights": [0.0] * SPEC.width}
    with pytest.raises(ValueError, match="weights"):
        learned_router_from_data(
            task_class="qa",
            version=1,
            hashing=SPEC.as_dict(),
            threshold=0.5,
            coefficients={"m": {"intercept": 0, "weights": [0.0]}},
        )
    with pytest.raises(ValueError, match="non-finite"):
        learned_router_from_data(
            task_class="qa",
            version=1,
            hashing=SPEC.as_dict(),
            threshold=0.5,
            coefficients={"m": {**good, "intercept": float("nan")}},
        )
    with pytest.raises(ValueError, match="scheme"):
        learned_router_from_data(
            task_class="qa",
            version=1,
            hashing={**SPEC.as_dict(), "scheme": "pickle"},
            threshold=0.5,
            coefficients={"m": good},
        )
    with pytest.raises(ValueError, match="rule"):
        learned_router_from_data(
            task_class="qa",
            version=1,
            hashing=SPEC.as_dict(),
            threshold=0.5,
            coefficients={"m": good},
            rule="cheapest",
        )
    with pytest.raises(ValueError, match="threshold"):
        learned_router_from_data(
            task_class="qa",
            version=1,
            hashing=SPEC.as_dict(),
            threshold=1.5,
            coefficients={"m": good},
        )


def _model(slug: str, tier: int, locality: str, price: float) -> ModelInfo:
    return ModelInfo(
        slug=slug,
        provider="p",
        base_url="http://127.0.0.1:1/v1",
        provider_model=slug,
        version="1",
        tier=tier,
        locality=locality,
        context_window=32000,
        max_output_tokens=1024,
        status="active",
        input_usd_per_mtok=price,
        output_usd_per_mtok=price,
    )


def _snapshot(strategy: str = "learned", threshold: float = 0.8, rule: str = "success") -> object:
    models = [
        _model("local", 1, "local", 0.1),
        _model("mid", 2, "cloud", 1.0),
        _model("big", 3, "cloud", 10.0),
    ]
    return snapshot_build(
        version=7,
        models=models,
        task_classes=[TaskClassInfo(slug="qa", default_output_cap=256)],
        # The chain's order is the rule's; learned routing orders by cost itself.
        routes=[
            RouteInfo(task_class="qa", primary="big", fallbacks=("local", "mid"), strategy=strategy)
        ],
        quality={("big", "qa"): 0.97, ("local", "qa"): 0.7, ("mid", "qa"): 0.85},
        learned={"qa": _router(threshold, rule)},
    )


def _req(prompt: str, **extra: object) -> DecisionRequest:
    return DecisionRequest(task_class="qa", input_tokens=100, prompt=prompt, **extra)  # type: ignore[arg-type]


def test_learned_routing_uses_three_tiers() -> None:
    snap = _snapshot()
    easy = decide(_req("what is two plus two"), snap)  # type: ignore[arg-type]
    assert easy.model.slug == "local" and easy.strategy == "learned"
    assert easy.confidence == pytest.approx(1 / (1 + math.exp(-2.5)), abs=1e-3)
    assert [f.model.slug for f in easy.fallbacks] == ["mid", "big"]  # dearer, cheapest first
    assert "Learned router v3" in easy.reason and "cheapest" in easy.reason
    selected = next(c for c in easy.candidates if c.model == "local")
    assert selected.reason.startswith("selected (predicted success 0.92")

    hard = decide(_req("hard"), snap)  # type: ignore[arg-type]
    assert hard.model.slug == "mid"
    assert [f.model.slug for f in hard.fallbacks] == ["big"]
    assert 0.75 < hard.confidence < 0.9

    strict = decide(_req("hard"), _snapshot(threshold=0.9))  # type: ignore[arg-type]
    assert strict.model.slug == "big"  # nothing cheaper clears 0.9: the strongest
    assert strict.confidence == 0.97  # no learned model for it: its calibrated estimate
    assert "no cheaper model" in strict.reason
    assert strict.fallbacks == ()


def test_rule_routes_ignore_the_router_and_policy_still_applies() -> None:
    rule = decide(_req("what is two plus two"), _snapshot(strategy="rule"))  # type: ignore[arg-type]
    assert rule.model.slug == "big" and rule.strategy == "rule"
    personal = decide(
        _req("hard", data_classification="personal"),
        _snapshot(),  # type: ignore[arg-type]
    )
    # Personal data: only local models, whatever the router predicts.
    assert personal.model.slug == "local" and personal.strategy == "policy"
    assert personal.local_only


def test_gain_rule_takes_the_cheapest_model_within_the_tolerated_loss() -> None:
    """Rule gain: the threshold is the predicted success one may give up against the best
    predicted model (here local ≈ 0.92 / mid ≈ 0.96 when easy, 0.18 / 0.82 when hard)."""
    snap = _snapshot(threshold=0.1, rule="gain")
    easy = decide(_req("what is two plus two"), snap)  # type: ignore[arg-type]
    assert easy.model.slug == "local" and easy.strategy == "learned"
    assert "within 0.10 of the best" in easy.reason
    hard = decide(_req("hard"), snap)  # type: ignore[arg-type]
    assert hard.model.slug == "mid"
    assert [f.model.slug for f in hard.fallbacks] == ["big"]
    # Tolerating a loss of 0.7 keeps even the hard request on the local model.
    lax = decide(_req("hard"), _snapshot(threshold=0.7, rule="gain"))  # type: ignore[arg-type]
    assert lax.model.slug == "local" and lax.confidence < 0.25


def test_rule_values_are_the_models_choices() -> None:
    from evaluation.models import LearnedRouterRule
    from routing.learned import RULES

    assert tuple(LearnedRouterRule.values) == RULES


def test_threshold_curve_and_targets() -> None:
    from routing.learned import threshold_curve, threshold_for_target

    router = _router(0.8)
    prompts = ["hard"] * 3 + ["what is two plus two"] * 7
    predictions = [predict_success(router, request_features(SPEC, p)) for p in prompts]
    ladder = ["local", "mid", "big"]
    costs = {"local": 0.01, "mid": 0.1, "big": 1.0}
    points = threshold_curve(router, predictions, ladder, costs, {"big": 0.97})
    assert [p.threshold for p in points][:3] == [0.0, 0.01, 0.02]
    # Rule success: a higher threshold never sends less to the strongest model.
    shares = [p.strongest_share for p in points]
    assert shares == sorted(shares) and shares[0] == 0.0 and shares[-1] == 1.0
    share, met = threshold_for_target(points, kind="strong_share", target=0.3)
    assert met and share.strongest_share == pytest.approx(0.3)
    quality, met = threshold_for_target(points, kind="quality", target=0.9)
    assert met and quality.expected_success >= 0.9
    assert all(p.expected_success < 0.9 for p in points if p.mean_cost < quality.mean_cost)
    best, met = threshold_for_target(points, kind="quality", target=0.999)
    assert not met and best.expected_success == max(p.expected_success for p in points)
    with pytest.raises(ValueError, match="kind"):
        threshold_for_target(points, kind="latency", target=0.1)


def test_structure_features_describe_the_form_not_the_topic() -> None:
    def dense(prompt: str) -> dict[str, float]:
        f = request_features(SPEC, prompt)
        return {name: f.get(SPEC.n_features + i, 0.0) for i, name in enumerate(SPEC.dense)}

    assert SPEC.dense == STRUCTURE_FEATURES and SPEC.width == 256 + len(STRUCTURE_FEATURES)
    biology = dense("Which organelle makes ATP?\nA. Nucleus\nB. Mitochondrion\nAnswer:")
    law = dense("Which court hears the appeal?\nA. Crown Court\nB. High Court\nAnswer:")
    # Another topic in the same form: the same options, question word and shares.
    for name in ("options", "q_which", "question_mark", "negation", "log_lines", "code"):
        assert biology[name] == law[name], name
    assert biology["options"] == 2 / 5 and biology["q_which"] == 1.0
    assert biology["option_share"] > 0 and biology["log_option_len"] > 0
    maths = dense("Find x if 3x + 4 = 19 and x > 0. Which is NOT a solution?\n1) 5\n2) -5")
    # The first question word of the last line before the options opens it.
    assert maths["q_find"] == 1.0 and maths["q_which"] == maths["q_if"] == 0.0
    assert maths["negation"] == 1.0 and maths["options"] == 2 / 5
    assert maths["digit_share"] > biology["digit_share"]
    assert maths["math_share"] > biology["math_share"] == 0.0
    code = dense("```\ndef f():\n    return {1: 2}\n```\nWhat does f() return?")
    assert code["code"] == 1.0 and code["q_what"] == 1.0 and biology["code"] == 0.0


def test_feature_sets_are_stored_settings() -> None:
    # A router stored before the structure features (no "dense"): the three lengths.
    old = HashingSpec.from_dict({"scheme": "crc32-signed-v1", "n_features": 64, "ngram_max": 2})
    assert old.dense == LENGTH_FEATURES and old.width == 67
    structure = HashingSpec(n_features=64, ngram_max=0)
    assert HashingSpec.from_dict(structure.as_dict()) == structure
    # No word n-grams: the buckets hold only the template and metadata.
    f = request_features(structure, "refund the order twice", template="t@1")
    assert len([i for i in f if i < 64]) == 1
    assert request_features(structure, "refund the order twice", template="t@1") == (
        request_features(structure, "order the refund twice", template="t@1")
    )
    for bad in ({"dense": ["log_chars", "shoe_size"]}, {"dense": ["log_chars", "log_chars"]},
                {"ngram_max": 4}):  # fmt: skip
        with pytest.raises(ValueError):
            HashingSpec.from_dict({**structure.as_dict(), **bad})


def test_structure_patterns_skipped_only_when_they_cannot_match() -> None:
    """The code and negation features skip their expression when the text holds none of
    its literals: the same answers as the expression alone, on texts built from every
    literal, its near misses and separators."""
    import random

    from routing.learned import _CODE, _CODE_HINTS, _NEGATION, _NEGATION_WORDS, _matches

    pieces = [
        *_CODE_HINTS, *_NEGATION_WORDS, "def", "returns", "xreturn", "; \n", ";x", "print",
        "<b>", "</a>", "<1>", "NOTE", "xNOT", "never", " ", "\n", "a", "_", "Z",
    ]  # fmt: skip
    rng = random.Random(2)
    matched = 0
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        for pattern, hints in ((_CODE, _CODE_HINTS), (_NEGATION, _NEGATION_WORDS)):
            expected = pattern.search(text) is not None
            assert _matches(pattern, hints, text) == expected, (pattern.pattern, text)
            matched += expected
    assert 1000 < matched < 9000  # both answers are exercised
