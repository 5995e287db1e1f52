"""The product's own evaluation workload: seeded, realistic, gradeable requests per task class.

Plain Python (no Django, no files): ``workload_items(task_class)`` generates the same items
every time for the same seed — nothing is downloaded or copied from outside the project.
Every item knows what a correct answer is, so the replay fleet can answer it as a model of a
given skill would (:mod:`evaluation.fleet.skills`), the demo traffic can store its reference
answer, and the sweeps' graders have something real to grade:

================================  ===========================================  ===========
task class                        item                                         reference
================================  ===========================================  ===========
multi-step-reasoning              arithmetic word problem, 2–5 steps           number
field-extraction                  invoice text (three layouts, distractors)    JSON fields
ticket-triage                     support ticket                               queue/prio
intent-detection                  customer message                             intent
short-summary                     a short e-mail thread                        summary
policy-check                      a draft against the communication policy     verdict
pii-redaction                     a customer record                            redacted
sql-generation                    an analyst's question about the warehouse    SQL
long-report-synthesis             retrieved analyses of churn by region        key facts
customer-reply-draft              a customer complaint and the order context   key facts
================================  ===========================================  ===========

Each item has a difficulty (1 easy · 2 medium · 3 hard; about 50 / 35 / 15 %), the correct
answer text(s), plausible wrong answers (valid but wrong) and invalid ones (malformed,
chatty, truncated) — the fleet picks among them per model and item.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

__all__ = [
    "DEFAULT_SEED",
    "DIFFICULTY_WEIGHTS",
    "INVOICE_SCHEMA",
    "ITEMS_BY_CLASS",
    "ITEMS_PER_CLASS",
    "SQL_READ_ONLY_PATTERN",
    "TASK_CLASSES",
    "WorkloadItem",
    "items_per_class",
    "normalise_prompt",
    "workload_index",
    "workload_item",
    "workload_items",
]

Check = Literal["number", "label", "json", "facts", "text"]

DEFAULT_SEED = 7
ITEMS_PER_CLASS = 600
# Classes with more items: the demo's learned router (ticket-triage, evaluation.demo) needs
# enough distinct tickets to learn which ones trip the small models (with 600 it cannot
# tell them from noise: held-out AUC about 0.5; with 3,000 about 0.7).
ITEMS_BY_CLASS: Mapping[str, int] = {"ticket-triage": 3000}


def items_per_class(task_class: str) -> int:
    return ITEMS_BY_CLASS.get(task_class, ITEMS_PER_CLASS)


DIFFICULTY_WEIGHTS = (0.5, 0.35, 0.15)

# The field-extraction output schema (the demo task class uses this one).
INVOICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["invoice_number", "vendor", "issue_date", "total", "currency"],
    "properties": {
        "invoice_number": {"type": "string", "minLength": 3},
        "vendor": {"type": "string", "minLength": 2},
        "issue_date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
        "total": {"type": "number"},
        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
    },
}

# What the sql-generation regex grader accepts: one read-only statement, no prose, no fence.
SQL_READ_ONLY_PATTERN = (
    r"(?is)\s*(?:select|with)\b(?:(?!\b(?:insert|update|delete|drop|alter|truncate)\b)[^;])*"
    r"\bfrom\b[^;]*;?\s*"
)


def normalise_prompt(text: str) -> str:
    """Collapse whitespace runs to single spaces and strip the ends (prompt lookup key)."""
    return " ".join(text.split())


_PUNCT = str.maketrans("", "", string.punctuation)
_FINAL_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _label(text: str) -> str:
    return " ".join(text.casefold().translate(_PUNCT).split())


def _final_number(text: str) -> float | None:
    """'#### N', else the last number (GSM8K style)."""
    tail = text.rsplit("####", 1)[1] if "####" in text else text
    numbers = _FINAL_RE.findall(tail)
    return float(numbers[-1].replace(",", "")) if numbers else None


@dataclass(frozen=True, slots=True)
class WorkloadItem:
    """One gradeable request of a task class."""

    id: str
    task_class: str
    difficulty: int  # 1 easy · 2 medium · 3 hard
    prompt: str
    reference: str  # what a grader compares with (metadata["reference_answer"])
    check: Check  # how a judge decides whether an answer is right
    answers: tuple[str, ...]  # correct answer texts
    wrong: tuple[str, ...]  # well-formed but wrong answers
    invalid: tuple[str, ...]  # malformed / chatty / truncated answers
    facts: tuple[str, ...] = ()  # what a correct prose answer must state (check="facts")

    def is_correct(self, answer: str) -> bool:
        """Would a careful reviewer accept ``answer``? (What the fleet's judges know.)"""
        if self.check == "number":
            got, expected = _final_number(answer), _final_number(self.reference)
            return got is not None and expected is not None and abs(got - expected) < 1e-6
        if self.check == "label":
            return _label(answer) == _label(self.reference)
        if self.check == "json":
            try:
                return bool(json.loads(answer) == json.loads(self.reference))
            except (json.JSONDecodeError, ValueError):
                return False
        if self.check == "facts":
            folded = answer.casefold()
            return all(fact.casefold() in folded for fact in self.facts)
        return normalise_prompt(answer) == normalise_prompt(self.reference)


@dataclass(frozen=True, slots=True)
class _Parts:
    prompt: str
    reference: str
    check: Check
    answers: tuple[str, ...]
    wrong: tuple[str, ...]
    invalid: tuple[str, ...]
    facts: tuple[str, ...] = ()


# --- vocabulary ---------------------------------------------------------------------------

NAMES = (
    "Amira", "Ben", "Chen", "Dana", "Emil", "Fatima", "Goran", "Hana", "Ines", "Jonas",
    "Kofi", "Lena", "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq",
    "Uma", "Viktor", "Wen", "Yara", "Zoe",
)  # fmt: skip
SURNAMES = (
    "Andersen", "Bauer", "Costa", "Dubois", "Eriksson", "Fischer", "García", "Horvat",
    "Ivanova", "Jansen", "Kowalski", "Larsen", "Moreau", "Novak", "Okafor", "Petrov",
)  # fmt: skip
COMPANIES = (
    "Acme", "Borealis", "Cobalt", "Delta Freight", "Evergreen", "Fjord", "Granite", "Helix",
    "Ionic", "Juniper", "Kestrel", "Lumen", "Meridian", "Northwind", "Orchid", "Pioneer",
)  # fmt: skip
SUFFIXES = ("GmbH", "Ltd", "Inc.", "S.A.", "B.V.", "AB", "Oy", "S.r.l.")
CITIES = ("Berlin", "Leeds", "Lyon", "Utrecht", "Malmö", "Turku", "Porto", "Graz", "Toronto")
CURRENCIES = ("EUR", "USD", "GBP", "SEK", "CHF")
PRODUCTS = ("desk lamp", "office chair", "monitor arm", "label printer", "headset", "router")


def _money(value: float) -> str:
    return f"{value:,.2f}"


def _euro_money(value: float) -> str:
    """1.234,50 — the continental layout (a harder invoice)."""
    return f"{value:,.2f}".replace(",", "_").replace(".", ",").replace("_", ".")


# --- multi-step reasoning -----------------------------------------------------------------


def _reasoning(rng: random.Random, difficulty: int) -> _Parts:
    name = rng.choice(NAMES)
    if difficulty == 1:
        if rng.random() < 0.5:
            a, p, b = rng.randint(3, 12), rng.randint(2, 9), rng.randint(15, 60)
            question = (
                f"{name} buys {a} notebooks at ${p} each and a backpack for ${b}. "
                f"How much does {name} spend in total?"
            )
            steps = [
                f"Notebooks: {a} × ${p} = ${a * p}.",
                f"Total: ${a * p} + ${b} = ${a * p + b}.",
            ]
            answer, slip = a * p + b, a * p
        else:
            trays, per, sold = rng.randint(3, 9), rng.choice((6, 8, 12)), rng.randint(5, 20)
            question = (
                f"A bakery bakes {trays} trays of {per} muffins and sells {sold} of them by noon. "
                "How many muffins are left?"
            )
            steps = [
                f"Baked: {trays} × {per} = {trays * per} muffins.",
                f"Left: {trays * per} − {sold} = {trays * per - sold}.",
            ]
            answer, slip = trays * per - sold, trays * per + sold
    elif difficulty == 2:
        if rng.random() < 0.5:
            wage, hours = rng.randint(14, 32), rng.randint(12, 38)
            spend, weeks = rng.randint(100, 10 * wage), rng.randint(3, 10)
            question = (
                f"{name} earns ${wage} an hour and works {hours} hours a week. Each week "
                f"{name} spends ${spend} on rent and food and saves the rest. "
                f"How much does {name} save in {weeks} weeks?"
            )
            weekly = wage * hours
            steps = [
                f"Weekly pay: {wage} × {hours} = ${weekly}.",
                f"Weekly savings: {weekly} − {spend} = ${weekly - spend}.",
                f"Over {weeks} weeks: {weekly - spend} × {weeks} = ${(weekly - spend) * weeks}.",
            ]
            answer, slip = (weekly - spend) * weeks, weekly * weeks - spend
        else:
            s1, t1, s2, t2 = (
                rng.choice((60, 80, 90, 120)),
                rng.randint(2, 5),
                rng.choice((40, 50, 70)),
                rng.randint(1, 4),
            )
            question = (
                f"A train runs at {s1} km/h for {t1} hours, then at {s2} km/h for {t2} hours. "
                "How many kilometres does it travel?"
            )
            steps = [
                f"First leg: {s1} × {t1} = {s1 * t1} km.",
                f"Second leg: {s2} × {t2} = {s2 * t2} km.",
                f"Total: {s1 * t1} + {s2 * t2} = {s1 * t1 + s2 * t2} km.",
            ]
            answer, slip = s1 * t1 + s2 * t2, (s1 + s2) * (t1 + t2) // 2
    else:
        if rng.random() < 0.5:
            n, cost = rng.randint(20, 80), rng.randint(20, 60)
            price = 20 * rng.randint(cost // 20 + 2, cost // 20 + 5)
            full, discount = rng.randint(5, n - 5), rng.choice((10, 20, 25, 50))
            rest = n - full
            sale = price * (100 - discount) // 100
            profit = full * price + rest * sale - n * cost
            question = (
                f"A shop orders {n} jackets at ${cost} each. It sells {full} of them at ${price} "
                f"and the rest at a {discount}% discount. What is the shop's profit?"
            )
            steps = [
                f"Full-price sales: {full} × {price} = ${full * price}.",
                f"Sale price: {price} × {100 - discount}% = ${sale}.",
                f"Discounted sales: {rest} × {sale} = ${rest * sale}.",
                f"Cost: {n} × {cost} = ${n * cost}.",
                f"Profit: {full * price} + {rest * sale} − {n * cost} = ${profit}.",
            ]
            answer, slip = profit, full * price + rest * price - n * cost
        else:
            cap, pct = 100 * rng.randint(5, 40), rng.choice((20, 25, 40, 50, 60, 75))
            pump, leak, minutes = rng.randint(8, 25), rng.randint(1, 7), rng.randint(10, 45)
            start = cap * pct // 100
            answer = start + (pump - leak) * minutes
            question = (
                f"A water tank holds {cap} litres and is {pct}% full. A pump adds {pump} litres a "
                f"minute for {minutes} minutes while a leak loses {leak} litres a minute. "
                "How many litres are in the tank then?"
            )
            steps = [
                f"Start: {cap} × {pct}% = {start} L.",
                f"Net inflow: {pump} − {leak} = {pump - leak} L/min.",
                f"Added: {pump - leak} × {minutes} = {(pump - leak) * minutes} L.",
                f"Now: {start} + {(pump - leak) * minutes} = {answer} L.",
            ]
            slip = start + pump * minutes
    if slip == answer:
        slip = answer + rng.choice((-10, 10, 2))
    good = "\n".join(steps) + f"\n#### {answer}"
    bad = "\n".join([*steps[:-1], f"So the result is {slip}."]) + f"\n#### {slip}"
    truncated = "\n".join(steps[: max(1, len(steps) - 1)])[:-1] + " and then"
    return _Parts(
        prompt=question,
        reference=str(answer),
        check="number",
        answers=(good, "Let me work through it.\n" + good),
        wrong=(bad,),
        invalid=(truncated, "I would need more information to answer this reliably."),
    )


# --- field extraction ---------------------------------------------------------------------


def _extraction(rng: random.Random, difficulty: int) -> _Parts:
    vendor = f"{rng.choice(COMPANIES)} {rng.choice(SUFFIXES)}"
    customer = (
        f"{rng.choice([c for c in COMPANIES if not vendor.startswith(c)])} {rng.choice(SUFFIXES)}"
    )
    prefix = rng.choice(("INV", "RE", "FA", "F"))
    number = f"{prefix}-{rng.randint(2024, 2026)}-{rng.randint(100, 99999):05d}"
    date = f"2026-{rng.randint(1, 11):02d}-{rng.randint(1, 28):02d}"
    currency = rng.choice(CURRENCIES)
    lines = []
    subtotal = 0.0
    for _ in range(rng.randint(1, 2 + difficulty)):
        qty, unit = rng.randint(1, 12), rng.randint(5, 900) + rng.choice((0, 0.5, 0.99))
        subtotal += qty * unit
        lines.append((rng.choice(PRODUCTS), qty, unit))
    vat = rng.choice((0, 7, 19, 20, 21, 25))
    total = round(subtotal * (1 + vat / 100), 2)
    po = f"PO-{rng.randint(10000, 99999)}"
    if difficulty == 1:
        body = [f"INVOICE {number}", f"From: {vendor}, {rng.choice(CITIES)}", f"Date: {date}"]
        body += [f"  {q} × {p} @ {_money(u)}" for p, q, u in lines]
        body += [f"TOTAL DUE: {_money(total)} {currency}"]
    elif difficulty == 2:
        d = date.split("-")
        body = [
            f"{vendor} · {rng.choice(CITIES)}",
            f"Rechnung Nr. {number} vom {d[2]}.{d[1]}.{d[0]}",
        ]
        body += [f"  {q}x {p} je {_euro_money(u)} {currency}" for p, q, u in lines]
        body += [
            f"Netto {_euro_money(subtotal)} · MwSt {vat} %",
            f"Gesamtbetrag {_euro_money(total)} {currency}",
        ]
    else:
        body = [f"Customer order {po} — please quote on all correspondence", f"Bill to: {customer}"]
        body += [f"Supplier: {vendor}", f"Invoice reference {number}, issued {date}"]
        body += [f"  {p}: {q} units, {_money(u)} {currency} each" for p, q, u in lines]
        body += [f"Previous balance {_money(rng.randint(50, 900))} {currency} (settled)"]
        body += [
            f"Subtotal {_money(subtotal)}, VAT {vat}%: amount payable {_money(total)} {currency}"
        ]
    prompt = (
        "Extract the invoice fields as JSON: invoice_number, vendor, issue_date (YYYY-MM-DD), "
        "total (number) and currency (ISO code).\n\n" + "\n".join(body)
    )
    fields = {
        "invoice_number": number,
        "vendor": vendor,
        "issue_date": date,
        "total": total,
        "currency": currency,
    }
    reference = json.dumps(fields, ensure_ascii=False)
    wrong_total = {**fields, "total": round(subtotal, 2) if vat else round(total + 10, 2)}
    wrong_number = (
        {**fields, "invoice_number": po} if difficulty == 3 else {**fields, "vendor": customer}
    )
    missing = {k: v for k, v in fields.items() if k != "currency"}
    as_text = {**fields, "total": f"{_money(total)} {currency}"}
    return _Parts(
        prompt=prompt,
        reference=reference,
        check="json",
        answers=(reference,),
        wrong=(
            json.dumps(wrong_total, ensure_ascii=False),
            json.dumps(wrong_number, ensure_ascii=False),
        ),
        invalid=(
            json.dumps(missing, ensure_ascii=False),
            json.dumps(as_text, ensure_ascii=False),
            "Here are the fields:\n" + reference[:-8],
        ),
    )


# --- ticket triage and intent detection ---------------------------------------------------

QUEUES = ("billing", "technical", "account", "shipping")
PRIORITIES = ("low", "normal", "high", "urgent")
_TICKETS: dict[str, tuple[str, ...]] = {
    "billing": (
        "I was charged twice for invoice {n} this month.",
        "The VAT on my last invoice looks wrong, can you correct invoice {n}?",
        "Our card was declined although the account has funds (customer {n}).",
    ),
    "technical": (
        "The export to CSV fails with error 0x{h} since the update.",
        "Our API calls return 502 for about a third of requests (tenant {n}).",
        "The mobile app crashes when I open the reports tab.",
    ),
    "account": (
        "Please add two seats for new colleagues to account {n}.",
        "I cannot reset my password, the link expires immediately.",
        "We need to transfer ownership of workspace {n} to a colleague.",
    ),
    "shipping": (
        "Order {n} shows delivered but nothing arrived.",
        "Can you ship order {n} to our Leeds office instead?",
        "The parcel for order {n} arrived damaged.",
    ),
}
_IMPACT = {
    "low": "No rush, whenever you get to it.",
    "normal": "It would be good to have this sorted this week.",
    "high": "This is blocking several people on our team today.",
    "urgent": "Production is down for all our customers right now.",
}
_DECOYS = {
    "billing": "I also wondered whether you have a new price list.",
    "technical": "By the way the invoice PDF looked a bit odd.",
    "account": "Shipping of our last order was fine, thanks.",
    "shipping": "Also my password manager keeps asking me to log in.",
}


def _triage(rng: random.Random, difficulty: int) -> _Parts:
    queue, priority = rng.choice(QUEUES), rng.choices(PRIORITIES, (0.25, 0.4, 0.25, 0.1))[0]
    text = rng.choice(_TICKETS[queue]).format(
        n=rng.randint(10000, 99999), h=f"{rng.randint(0, 65535):04X}"
    )
    parts = [text, _IMPACT[priority]]
    if difficulty >= 2:
        other = rng.choice([q for q in QUEUES if q != queue])
        parts.insert(1, _DECOYS[other])
    if difficulty == 3:
        parts.append(
            "URGENT!!! Please answer asap!!!" if priority in ("low", "normal") else "Thanks."
        )
    subject = text.split(",")[0][:48]
    prompt = (
        "Triage this support ticket. Reply with queue/priority only "
        f"(queues: {', '.join(QUEUES)}; priorities: {', '.join(PRIORITIES)}).\n\n"
        f"From: {rng.choice(NAMES)} {rng.choice(SURNAMES)}\nSubject: {subject}\n\n"
        + " ".join(parts)
    )
    reference = f"{queue}/{priority}"
    wrong_queue = rng.choice([q for q in QUEUES if q != queue])
    wrong_prio = rng.choice([p for p in PRIORITIES if p != priority])
    return _Parts(
        prompt=prompt,
        reference=reference,
        check="label",
        answers=(reference,),
        wrong=(f"{wrong_queue}/{priority}", f"{queue}/{wrong_prio}"),
        invalid=(
            f"This looks like a {queue} issue, probably {priority} priority.",
            f"Queue: {queue.capitalize()}\nPriority: {priority}",
        ),
    )


INTENTS = (
    "change address",
    "cancel subscription",
    "refund request",
    "shipping question",
    "product question",
    "complaint",
    "update payment",
)
_INTENT_TEXTS: dict[str, tuple[str, ...]] = {
    "change address": (
        "We moved — please send order {n} to {city} instead.",
        "New address for my account: {city}, starting next month.",
    ),
    "cancel subscription": (
        "Please cancel my subscription at the end of this period.",
        "I no longer need the plan on account {n}, stop the renewal.",
    ),
    "refund request": (
        "I returned order {n} two weeks ago, where is my money?",
        "Item from order {n} was faulty; I want my money back.",
    ),
    "shipping question": (
        "Do you deliver to {city}, and how long does it take?",
        "When will order {n} be dispatched?",
    ),
    "product question": (
        "Does the {product} work with a 110 V supply?",
        "Is the {product} available in black?",
    ),
    "complaint": (
        "Third time the {product} broke. Your support is useless.",
        "Your courier was rude and left order {n} in the rain.",
    ),
    "update payment": (
        "My card expires, how do I add a new one?",
        "Switch account {n} to invoice payment please.",
    ),
}
_INTENT_DECOYS = {
    "refund request": "complaint",
    "complaint": "refund request",
    "change address": "shipping question",
    "shipping question": "change address",
    "cancel subscription": "update payment",
    "update payment": "cancel subscription",
    "product question": "complaint",
}


def _intent(rng: random.Random, difficulty: int) -> _Parts:
    intent = rng.choice(INTENTS)
    text = rng.choice(_INTENT_TEXTS[intent]).format(
        n=rng.randint(10000, 99999), city=rng.choice(CITIES), product=rng.choice(PRODUCTS)
    )
    if difficulty >= 2:
        text = f"Hi, {text[0].lower()}{text[1:]} Thanks, {rng.choice(NAMES)}"
    if difficulty == 3:
        text += " (Honestly I'm annoyed, this is not the first time.)"
    prompt = (
        f"Classify the intent of this customer message as one of: {', '.join(INTENTS)}.\n\n{text}"
    )
    decoy = _INTENT_DECOYS[intent]
    return _Parts(
        prompt=prompt,
        reference=intent,
        check="label",
        answers=(intent.capitalize(), intent),
        wrong=(decoy, rng.choice([i for i in INTENTS if i not in (intent, decoy)])),
        invalid=(f"The customer seems to have a {intent} kind of issue.", "unclear"),
    )


# --- short summary ------------------------------------------------------------------------

_PROBLEMS = (
    ("the onboarding e-mails go out twice", "deduplicate the mailing job"),
    ("the Q{q} invoices were sent without purchase-order numbers", "re-issue the invoices"),
    ("the staging database ran out of disk", "add monitoring and a cleanup job"),
    ("the partner portal times out for German users", "move the portal behind the CDN"),
    ("customer {n} was quoted the old price list", "honour the quote and update the list"),
)
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")


def _summary(rng: random.Random, difficulty: int) -> _Parts:
    a, b, c = rng.sample(NAMES, 3)
    problem, action = rng.choice(_PROBLEMS)
    problem = problem.format(q=rng.randint(1, 4), n=rng.randint(1000, 9999))
    day = rng.choice(_DAYS)
    thread = [
        f"{a}: Heads-up — {problem}. Several customers noticed.",
        f"{b}: I can {action}.",
        f"{c}: Fine by me if it is done by {day}.",
        f"{b}: Agreed, I will {action} by {day}.",
    ]
    if difficulty >= 2:
        thread.insert(2, f"{c}: Could we also revisit the dashboard colours at some point?")
    if difficulty == 3:
        thread.insert(1, f"{a}: Correction, it only affects the EU tenants.")
    prompt = "Summarise this thread in at most three sentences.\n\n" + "\n".join(thread)
    reference = f"{a} reported that {problem}. {b} will {action} by {day}."
    return _Parts(
        prompt=prompt,
        reference=reference,
        check="facts",
        answers=(reference, f"{a} reported that {problem}; {b} agreed to {action} by {day}."),
        wrong=(
            "The team discussed an issue and agreed on next steps.",
            f"{c} raised a question about the dashboard; no decision was made.",
        ),
        invalid=("Summary:", "I cannot summarise this thread."),
        facts=(a, b, day, action.split()[0]),
    )


# --- policy check -------------------------------------------------------------------------

_RULES = {
    "guarantee": ("We guarantee {p}% returns on every plan.", "guaranteed outcomes"),
    "medical": ("Our {product} cures back pain within a week.", "health claims"),
    "discount": ("Reply today for a {d}% discount on everything.", "discounts above 20 %"),
    "competitor": ("Unlike {company}, we never lose your data.", "naming competitors"),
    "personal data": (
        "I attached the list of customers in {city} with their phone numbers.",
        "sharing personal data",
    ),
}
_CLEAN = (
    "Thanks for your patience — the new release ships on {day}.",
    "Our support desk is open 8:00–18:00 CET on weekdays.",
    "Your order {n} is on its way and should arrive within three days.",
)


def _policy(rng: random.Random, difficulty: int) -> _Parts:
    violates = rng.random() < 0.45
    fill = {
        "p": rng.randint(5, 30),
        "product": rng.choice(PRODUCTS),
        "d": rng.choice((25, 30, 40, 50)),
        "company": rng.choice(COMPANIES),
        "city": rng.choice(CITIES),
        "day": rng.choice(_DAYS),
        "n": rng.randint(10000, 99999),
    }
    sentences = [rng.choice(_CLEAN).format(**fill)]
    rule = ""
    if violates:
        rule = rng.choice(tuple(_RULES))
        sentences.append(_RULES[rule][0].format(**fill))
    if difficulty >= 2:
        sentences.append(rng.choice(_CLEAN).format(**fill))
    if difficulty == 3 and not violates:
        sentences.append("We aim for a 15% discount for loyal customers, subject to approval.")
    rng.shuffle(sentences)
    rules = "; ".join(f"no {v[1]}" for v in _RULES.values())
    prompt = (
        f"Check this draft against the communication policy ({rules}). Reply 'Verdict: "
        "compliant' or 'Verdict: violation (<rule>)' and one sentence why.\n\nDraft: "
        + " ".join(sentences)
    )
    if violates:
        reference = f"Verdict: violation ({rule})"
        answer = f"{reference}. The draft breaks the rule on {_RULES[rule][1]}."
        other = rng.choice([r for r in _RULES if r != rule])
        wrong: tuple[str, ...] = (
            "Verdict: compliant. Nothing in the draft breaks the policy.",
            f"Verdict: violation ({other}). The draft breaks the rule on {_RULES[other][1]}.",
        )
        facts: tuple[str, ...] = ("violation", rule)
    else:
        reference = "Verdict: compliant"
        answer = f"{reference}. The draft makes no claims the policy forbids."
        wrong = ("Verdict: violation (discount). The draft promises a discount.",)
        facts = ("compliant",)
    return _Parts(
        prompt=prompt,
        reference=reference,
        check="facts",
        answers=(answer,),
        wrong=wrong,
        invalid=("It depends on how strictly the policy is read.",),
        facts=facts,
    )


# --- PII redaction ------------------------------------------------------------------------


def _redaction(rng: random.Random, difficulty: int) -> _Parts:
    first, last = rng.choice(NAMES), rng.choice(SURNAMES)
    email = f"{first.lower()}.{last.lower()}@example.{rng.choice(('com', 'org', 'net'))}"
    phone = f"+44 20 7946 {rng.randint(0, 9999):04d}"
    city = rng.choice(CITIES)
    street = f"{rng.randint(1, 120)} {rng.choice(('Mill', 'Station', 'Harbour', 'Church'))} Road"
    iban = f"GB{rng.randint(10, 99)} NWBK 6016 1331 {rng.randint(1000, 9999)} {rng.randint(10, 99)}"
    record = [
        f"Customer {first} {last} called about order {rng.randint(10000, 99999)}.",
        f"Reach them at {email} or {phone}.",
    ]
    redacted = [record[0].replace(f"{first} {last}", "[NAME]"), "Reach them at [EMAIL] or [PHONE]."]
    if difficulty >= 2:
        record.append(f"Deliver to {street}, {city}.")
        redacted.append(f"Deliver to [ADDRESS], {city}.")
    if difficulty == 3:
        record.append(f"Refund to IBAN {iban}; {first} prefers e-mail.")
        redacted.append("Refund to IBAN [IBAN]; [NAME] prefers e-mail.")
    prompt = (
        "Redact all personal data (names, e-mail addresses, phone numbers, street addresses, "
        "bank accounts) with [NAME], [EMAIL], [PHONE], [ADDRESS], [IBAN]. Return the text only."
        "\n\n" + " ".join(record)
    )
    reference = " ".join(redacted)
    leaky = reference.replace("[PHONE]", phone)
    return _Parts(
        prompt=prompt,
        reference=reference,
        check="text",
        answers=(reference,),
        wrong=(leaky, reference.replace("[EMAIL]", email)),
        invalid=("The record contains a name, an e-mail address and a phone number.",),
    )


# --- SQL generation -----------------------------------------------------------------------

_SQL = (
    (
        "Monthly active users by region for the last {k} months",
        "SELECT region, date_trunc('month', event_at) AS month, COUNT(DISTINCT user_id) AS mau "
        "FROM events WHERE event_at >= now() - interval '{k} months' GROUP BY region, month "
        "ORDER BY month, region;",
        "SELECT region, COUNT(user_id) AS mau FROM events GROUP BY region;",
    ),
    (
        "Top {k} customers by revenue in {y}, excluding test accounts",
        "SELECT c.id, c.name, SUM(o.amount) AS revenue FROM orders o JOIN customers c ON "
        "c.id = o.customer_id WHERE NOT c.is_test AND extract(year FROM o.created_at) = {y} "
        "GROUP BY c.id, c.name ORDER BY revenue DESC LIMIT {k};",
        "SELECT c.id, c.name, SUM(o.amount) AS revenue FROM orders o JOIN customers c ON "
        "c.id = o.customer_id GROUP BY c.id, c.name ORDER BY revenue DESC LIMIT {k};",
    ),
    (
        "Average order value per product category over the last {k} days",
        "SELECT p.category, AVG(o.amount) AS avg_order_value FROM orders o JOIN products p ON "
        "p.id = o.product_id WHERE o.created_at >= now() - interval '{k} days' "
        "GROUP BY p.category;",
        "SELECT p.category, SUM(o.amount) AS avg_order_value FROM orders o JOIN products p ON "
        "p.id = o.product_id GROUP BY p.category;",
    ),
    (
        "Share of orders refunded per month in {y}",
        "SELECT date_trunc('month', created_at) AS month, AVG(CASE WHEN refunded THEN 1.0 ELSE "
        "0 END) AS refund_share FROM orders WHERE extract(year FROM created_at) = {y} GROUP BY "
        "month ORDER BY month;",
        "SELECT COUNT(*) AS refund_share FROM orders WHERE refunded;",
    ),
)


_SQL_FILTERS = (
    ("plan", ("free", "pro", "team", "enterprise"), "on the {v} plan"),
    ("o.channel", ("web", "mobile", "partner", "retail"), "for {v} orders"),
    ("o.channel", ("web", "mobile", "partner", "retail"), "for {v} orders"),
    ("channel", ("web", "mobile", "partner", "retail"), "for {v} orders"),
)


def _sql(rng: random.Random, difficulty: int) -> _Parts:
    which = rng.randrange(len(_SQL))
    question, good, bad = _SQL[which]
    fill = {
        "k": rng.choice((3, 5, 6, 7, 10, 12, 14, 20, 25, 30, 60, 90)),
        "y": rng.choice((2023, 2024, 2025, 2026)),
    }
    question, good, bad = (s.format(**fill) for s in (question, good, bad))
    column, values, phrase = _SQL_FILTERS[which]
    if rng.random() < 0.8:
        value = rng.choice(values)
        question += " " + phrase.format(v=value)
        good = good.replace(" GROUP BY", f" AND {column} = '{value}' GROUP BY", 1)
    schema = (
        "Tables: events(user_id, region, plan, event_at), customers(id, name, is_test), "
        "orders(id, customer_id, product_id, amount, channel, refunded, created_at), "
        "products(id, category)."
    )
    if difficulty >= 2:
        question += ", as one query"
    if difficulty == 3:
        question += "; ignore rows with a NULL amount"
        good = good.replace(" GROUP BY", " AND amount IS NOT NULL GROUP BY", 1)
    prompt = f"Write one PostgreSQL query.\n{schema}\nQuestion: {question}."
    return _Parts(
        prompt=prompt,
        reference=good,
        check="text",
        answers=(good,),
        wrong=(bad,),
        invalid=(
            f"```sql\n{good}\n```",
            f"Here is a query that should work:\n{good}\nLet me know!",
        ),
    )


# --- long report synthesis ----------------------------------------------------------------

REGIONS = ("Nordics", "DACH", "Benelux", "Iberia", "UK & Ireland", "North America")
DRIVERS = ("price increase", "onboarding friction", "support wait times", "missing integrations")


def _report(rng: random.Random, difficulty: int) -> _Parts:
    quarter, year = rng.randint(1, 4), rng.choice((2025, 2026))
    regions = rng.sample(REGIONS, 3 + difficulty)
    churn = {r: round(rng.uniform(1.5, 9.5), 1) for r in regions}
    top = max(churn, key=lambda r: churn[r])
    driver = rng.choice(DRIVERS)
    decoy = rng.choice([d for d in DRIVERS if d != driver])
    docs = [f"[doc {i + 1}] {r}: quarterly churn {churn[r]} %." for i, r in enumerate(regions)]
    docs.append(f"[doc {len(docs) + 1}] Exit survey: most cited reason in {top} was {driver}.")
    if difficulty >= 2:
        docs.append(
            f"[doc {len(docs) + 1}] Across all regions, {decoy} was mentioned occasionally."
        )
    prompt = (
        f"Synthesise a short churn report for Q{quarter} {year} from the retrieved analyses: "
        "the region with the highest churn, its rate and the main driver, then a recommendation."
        "\n\n" + "\n".join(docs)
    )
    facts = (top, f"{churn[top]} %", driver)
    lowest = min(churn, key=lambda r: churn[r])
    body = (
        f"Q{quarter} {year} churn report. Churn was highest in {top} at {churn[top]} %, "
        f"driven mainly by {driver}. Other regions ranged from {churn[lowest]} % ({lowest}) "
        f"upwards. Recommendation: address {driver} in {top} first and track churn monthly."
    )
    wrong_top = rng.choice([r for r in regions if r != top])
    return _Parts(
        prompt=prompt,
        reference=" · ".join(facts),
        check="facts",
        answers=(body,),
        wrong=(
            body.replace(driver, decoy),
            body.replace(f"{churn[top]} %", f"{churn[wrong_top]} %").replace(top, wrong_top),
        ),
        invalid=(body[: len(body) // 3], "I cannot access the retrieved documents."),
        facts=facts,
    )


# --- customer reply draft -----------------------------------------------------------------


def _reply(rng: random.Random, difficulty: int) -> _Parts:
    name = rng.choice(NAMES)
    order = rng.randint(10000, 99999)
    amount = rng.randint(12, 480)
    currency = rng.choice(("EUR", "GBP", "USD"))
    days = rng.choice((3, 5, 7, 10))
    product = rng.choice(PRODUCTS)
    complaint = (
        f"My {product} from order {order} arrived broken. I want my {amount} {currency} back."
    )
    if difficulty >= 2:
        complaint += " I also expect compensation for the hassle."
    if difficulty == 3:
        complaint += f" (Order {order + 17} was fine, by the way.)"
    context = (
        f"Policy: full refund of damaged items within {days} business days; no extra compensation."
    )
    prompt = f"Draft a reply to the customer. {context}\n\nCustomer {name} writes: {complaint}"
    refund = f"{amount} {currency}"
    answer = (
        f"Dear {name}, I am sorry your {product} arrived damaged. We will refund {refund} for "
        f"order {order} within {days} business days. Kind regards, Customer Support"
    )
    return _Parts(
        prompt=prompt,
        reference=f"apology · refund {refund} · order {order} · {days} business days",
        check="facts",
        answers=(answer,),
        wrong=(
            answer.replace(
                f"within {days} business days", "and add a 20 % voucher as compensation"
            ),
            answer.replace(str(order), str(order + 17)),
        ),
        invalid=("Dear [Customer name], regarding order [number] ...", "Refund approved."),
        facts=(name, refund, str(order), f"{days} business days"),
    )


GENERATORS: dict[str, Callable[[random.Random, int], _Parts]] = {
    "multi-step-reasoning": _reasoning,
    "field-extraction": _extraction,
    "ticket-triage": _triage,
    "intent-detection": _intent,
    "short-summary": _summary,
    "policy-check": _policy,
    "pii-redaction": _redaction,
    "sql-generation": _sql,
    "long-report-synthesis": _report,
    "customer-reply-draft": _reply,
}
TASK_CLASSES: tuple[str, ...] = tuple(GENERATORS)


def _item_seed(seed: int, task_class: str, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{task_class}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def workload_item(task_class: str, index: int, *, seed: int = DEFAULT_SEED) -> WorkloadItem:
    """Item ``index`` of a class: the same for the same seed, whatever else is generated."""
    try:
        generate = GENERATORS[task_class]
    except KeyError:
        raise ValueError(f"no workload generator for task class {task_class!r}") from None
    rng = random.Random(_item_seed(seed, task_class, index))
    difficulty = rng.choices((1, 2, 3), DIFFICULTY_WEIGHTS)[0]
    parts = generate(rng, difficulty)
    return WorkloadItem(
        id=f"{task_class}/{seed}/{index}",
        task_class=task_class,
        difficulty=difficulty,
        prompt=parts.prompt,
        reference=parts.reference,
        check=parts.check,
        answers=parts.answers,
        wrong=parts.wrong,
        invalid=parts.invalid,
        facts=parts.facts,
    )


@lru_cache(maxsize=64)
def workload_items(
    task_class: str, *, seed: int = DEFAULT_SEED, size: int | None = None
) -> tuple[WorkloadItem, ...]:
    """The first ``size`` items of a class with distinct prompts (cached per process): an
    item is skipped when an earlier one asked exactly the same, so a prompt names one item.
    ``size`` defaults to the class's :func:`items_per_class`."""
    size = items_per_class(task_class) if size is None else size
    items: list[WorkloadItem] = []
    seen: set[str] = set()
    index = 0
    while len(items) < size and index < size * 20:
        item = workload_item(task_class, index, seed=seed)
        index += 1
        key = normalise_prompt(item.prompt)
        if key not in seen:
            seen.add(key)
            items.append(item)
    return tuple(items)


@lru_cache(maxsize=8)
def workload_index(
    *, seed: int = DEFAULT_SEED, size: int | None = None
) -> Mapping[str, WorkloadItem]:
    """Every class's items (``size`` each, default :func:`items_per_class`) keyed by
    :func:`normalise_prompt` of the prompt."""
    index: dict[str, WorkloadItem] = {}
    for task_class in TASK_CLASSES:
        for item in workload_items(task_class, seed=seed, size=size):
            index.setdefault(normalise_prompt(item.prompt), item)
    return index
