"""Fast, dependency-free PII detection for the routing hot path.

This module deliberately has no Django (or other third-party) imports so it can be used from
anywhere - request middleware, Celery workers, benchmarks - and it is designed for throughput:

* cheap pre-filters skip whole families of detectors (no digit in the text -> no digit-based
  detector runs; no ``@`` -> no e-mail scan; no ``+`` / ``(`` / ``:`` -> no scan for phone
  numbers written that way or for IPv6);
* all digit-led kinds (cards, SSNs, IPv4, DNI, most phone formats) are found in ONE regex pass,
  and IBAN / NINO / NIE in another: each regex starts with a plain character class so the engine
  can skip quickly to plausible starting points (left "word boundary" checks are look-behinds
  placed *after* the first character for that reason), and a gate of necessary prefixes rejects
  dates, times, versions and amounts inside the regex engine, before any Python code runs;
* regexes only propose candidates - the candidates are then confirmed by small pure validation
  functions (Luhn, ISO 7064 mod-97, SSA ranges, DNI check letter, ...) and context checks
  ("Phone:" / "Order no." / "version" right before a number), which use anchored matches on the
  reversed preceding text.

Detection runs on a *normalised* view of the text (:func:`pii_normalize`), so personal data
disguised with Unicode cannot slip past the ASCII-shaped detectors: NFKC (full-width and other
compatibility forms), format and control characters removed (zero-width space / joiner, soft
hyphen, BOM, bidi controls), stray combining marks removed, every Unicode space mapped to
``' '``, every dash to ``'-'``, ideographic and middle dots to ``'.'``, decimal digits of every
script to ASCII, and Cyrillic / Greek letters that look exactly like Latin ones folded to
Latin.  Plain ASCII text takes a fast path (one C-level check).  Text that cannot be scanned
(lone surrogates) raises :class:`UnscannableText`; callers treat that as personal data.
E-mail addresses written as ``jane (at) example (dot) com`` are found as well.

:func:`request_scan` applies the detector to every free-text field of a decision request
(prompt, retrieval query and document ids, prompt template id / version, metadata keys and
values) and :func:`request_free_text_stored` decides what of them may be stored.

Public API: :data:`PII_TYPES`, :class:`PiiMatch`, :func:`pii_normalize`, :func:`pii_scan`,
:func:`pii_types`, :func:`request_scan`, :func:`request_free_text_stored`.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import unicodedata
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from routing.enums import OPEN_CLASSIFICATIONS

if TYPE_CHECKING:
    from routing.schemas import DecisionInput, MetadataValue

logger = logging.getLogger(__name__)

__all__ = [
    "PII_TYPES",
    "PiiMatch",
    "RequestScan",
    "StoredFreeText",
    "UnscannableText",
    "dni_check_letter",
    "dni_is_valid",
    "iban_is_valid",
    "luhn_is_valid",
    "nino_is_valid",
    "pii_normalize",
    "pii_scan",
    "pii_types",
    "request_free_text_stored",
    "request_scan",
    "ssn_is_valid",
]

PII_TYPES: tuple[str, ...] = (
    "email",
    "phone",
    "credit_card",
    "iban",
    "us_ssn",
    "ip_address",
    "uk_nino",
    "es_dni",
)

# When two candidate matches overlap, the kind listed first wins.  Checksum-validated kinds come
# before the heuristic ones (phone numbers are the weakest signal, so they lose every tie).
_PRIORITY: dict[str, int] = {
    kind: rank
    for rank, kind in enumerate(
        (
            "email",
            "iban",
            "_blocker",
            "credit_card",
            "us_ssn",
            "es_dni",
            "uk_nino",
            "ip_address",
            "phone",
        )
    )
}


@dataclass(frozen=True, slots=True)
class PiiMatch:
    """A validated PII finding: ``text[start:end]`` is the matched value."""

    kind: str
    start: int
    end: int


# --------------------------------------------------------------------------------------------
# Pure validation functions
# --------------------------------------------------------------------------------------------


def luhn_is_valid(digits: str) -> bool:
    """Return True if the string of ASCII digits passes the Luhn (mod 10) checksum."""
    if not digits or not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


# IBAN lengths per country (SWIFT IBAN registry).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27,
    "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip


_IBAN_LETTERS = {
    ord(letter): str(value) for value, letter in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ", 10)
}


def iban_is_valid(iban: str) -> bool:
    """Validate a compact (no spaces) upper-case IBAN: country length and ISO 7064 mod-97."""
    if not iban.isascii() or not iban.isalnum() or not iban.isupper():
        return False
    expected = IBAN_LENGTHS.get(iban[:2])
    if expected is None or len(iban) != expected or not iban[2:4].isdigit():
        return False
    # ISO 13616: move the first four characters to the end, letters become 10..35, mod 97 == 1.
    return int((iban[4:] + iban[:4]).translate(_IBAN_LETTERS)) % 97 == 1


def ssn_is_valid(area: str, group: str, serial: str) -> bool:
    """US SSN structural rules (SSA): area not 000/666/9xx, group not 00, serial not 0000."""
    if len(area) != 3 or len(group) != 2 or len(serial) != 4:
        return False
    if not (area + group + serial).isdigit():
        return False
    if area in ("000", "666") or area[0] == "9":
        return False
    if group == "00" or serial == "0000":
        return False
    # Famous numbers that were never valid for an individual (Woolworth wallet card, ads).
    return (area, group, serial) not in (("078", "05", "1120"), ("219", "09", "9999"))


_NINO_BAD_FIRST = frozenset("DFIQUV")
_NINO_BAD_SECOND = frozenset("DFIOQUV")
_NINO_BAD_PREFIXES = frozenset(("BG", "GB", "KN", "NK", "NT", "TN", "ZZ"))


def nino_is_valid(nino: str) -> bool:
    """Validate a compact UK National Insurance number such as ``AB123456C`` (HMRC rules)."""
    if len(nino) != 9 or not nino.isascii():
        return False
    prefix, digits, suffix = nino[:2], nino[2:8], nino[8]
    if not prefix.isalpha() or not prefix.isupper() or not digits.isdigit():
        return False
    if prefix[0] in _NINO_BAD_FIRST or prefix[1] in _NINO_BAD_SECOND:
        return False
    if prefix in _NINO_BAD_PREFIXES:
        return False
    return suffix in "ABCD"


_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def dni_check_letter(number: str) -> str:
    """Return the check letter of a Spanish DNI number (8 digits) or NIE (X/Y/Z + 7 digits)."""
    if len(number) == 8 and number[0] in "XYZ":
        number = str("XYZ".index(number[0])) + number[1:]
    if len(number) != 8 or not number.isascii() or not number.isdigit():
        raise ValueError(f"not a DNI/NIE number: {number!r}")
    return _DNI_LETTERS[int(number) % 23]


def dni_is_valid(dni: str) -> bool:
    """Validate a compact DNI (``12345678Z``) or NIE (``X1234567L``)."""
    if len(dni) != 9:
        return False
    try:
        return dni_check_letter(dni[:8]) == dni[8]
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# Normalisation: one detection view of text however it is disguised
# --------------------------------------------------------------------------------------------


class UnscannableText(ValueError):
    """The text cannot be scanned reliably (lone surrogates); treat it as personal data."""


# Letters that render exactly like a Latin letter (Cyrillic, Greek).  NFKC leaves them alone.
_CONFUSABLES = {
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C",
    "Т": "T", "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J", "Ү": "Y", "Ԛ": "Q", "Ԝ": "W",
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "х": "x", "у": "y", "і": "i", "ј": "j",
    "ѕ": "s", "ԁ": "d", "һ": "h", "ԛ": "q", "ԝ": "w", "ӏ": "l",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N",
    "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "ο": "o",
}  # fmt: skip
# Dots that separate the parts of an address or a number: ideographic full stop, middle dots.
_DOTS = "\u3002\u00b7\u30fb\u2027\u2219\u22c5"
# Invisible letters (Hangul fillers) and other blanks NFKC keeps.
_INVISIBLE = "\u115f\u1160\u3164\uffa0"


# ASCII control characters other than tab, newline and carriage return are invisible too.
_ASCII_CONTROLS = (*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F)
_ASCII_CONTROL_BYTES = bytes(_ASCII_CONTROLS)
_ASCII_CONTROL_TABLE: dict[int, str | None] = dict.fromkeys(_ASCII_CONTROLS)


def _build_translation() -> dict[int, str | None]:
    table: dict[int, str | None] = dict(_ASCII_CONTROL_TABLE)
    code_points = (*range(0x80, 0x20000), *range(0xE0000, 0xE1000))
    for code in code_points:
        char = chr(code)
        category = unicodedata.category(char)
        if category in ("Cf", "Cc", "Mn", "Me"):
            table[code] = None  # zero-width, bidi, soft hyphen, BOM, C1 controls, stray marks
        elif category == "Zs":
            table[code] = " "
        elif category in ("Zl", "Zp"):
            table[code] = "\n"
        elif category == "Pd":
            table[code] = "-"
        elif category == "Nd":
            table[code] = str(unicodedata.decimal(char))
    table[0x85] = "\n"  # NEXT LINE
    table[0x2212] = "-"  # MINUS SIGN (a math symbol, not a dash)
    table[0x2800] = " "  # BRAILLE PATTERN BLANK
    for char in _DOTS:
        table[ord(char)] = "."
    for char in _INVISIBLE:
        table[ord(char)] = None
    for char, latin in _CONFUSABLES.items():
        table[ord(char)] = latin
    return table


_TRANSLATION = _build_translation()
# str.translate looks every character up in the table; a dict answers most with a KeyError
# (slow), a list indexed by code point answers in C.  The list covers the Basic Multilingual
# Plane (identity for characters with nothing to change); the few characters above it (emoji,
# tag characters, maths digits) are looked up in the dict only when the text has one.
_BMP_TABLE: list[int | str | None] = list(range(0x10000))
for _code, _value in _TRANSLATION.items():
    if _code < 0x10000:
        _BMP_TABLE[_code] = _value
_ASTRAL_TABLE = {code: value for code, value in _TRANSLATION.items() if code >= 0x10000}
_SURROGATE_OR_ASTRAL_RE = re.compile("[\ud800-\udfff\U00010000-\U0010ffff]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_ASTRAL_RE = re.compile("[\U00010000-\U0010ffff]")


def _astral_replacement(match: re.Match[str]) -> str:
    char = match.group()
    return _ASTRAL_TABLE.get(ord(char), char) or ""


def pii_normalize(text: str) -> str:
    """The detection view of `text` (see the module docstring); offsets of :func:`pii_scan`
    index into it.  Raises :class:`UnscannableText` for text with lone surrogates."""
    if text.isascii():
        encoded = text.encode("ascii")
        if len(encoded.translate(None, _ASCII_CONTROL_BYTES)) == len(encoded):
            return text  # the common case: two C-level passes, no regex
        return text.translate(_ASCII_CONTROL_TABLE)
    rare = _SURROGATE_OR_ASTRAL_RE.search(text)
    if rare is not None and _SURROGATE_RE.search(text, rare.start()) is not None:
        raise UnscannableText("lone surrogate in text")
    text = unicodedata.normalize("NFKC", text).translate(_BMP_TABLE)
    if rare is not None:
        text = _ASTRAL_RE.sub(_astral_replacement, text)
    return text


# --------------------------------------------------------------------------------------------
# Boundary and context helpers
# --------------------------------------------------------------------------------------------


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


def _left_ok(text: str, start: int) -> bool:
    """The candidate must be a standalone token, not the tail of a longer code or number."""
    if start == 0:
        return True
    prev = text[start - 1]
    if _is_word(prev):
        return False
    if prev in "-/#+.\\" and start >= 2 and _is_word(text[start - 2]):
        return False  # INV-4111..., ORD#..., ref/..., 1.415...
    if prev == "#":
        return False
    return not (prev == " " and start >= 2 and text[start - 2].isdigit())


def _right_ok(text: str, end: int) -> bool:
    if end >= len(text):
        return True
    nxt = text[end]
    if _is_word(nxt):
        return False
    if nxt in "-./:" and end + 1 < len(text) and text[end + 1].isalnum():
        return False  # 4111...-01, 0132.50, 10:30, 1.2.3.4-beta
    return not (nxt == " " and end + 1 < len(text) and text[end + 1].isdigit())


# Context keywords.  A label such as "Phone:" or "Order no." right before a number decides what
# the number is.  The patterns are matched against the *reversed* text before the candidate with
# ``re.match`` - anchored, so it costs one attempt instead of a search through the window.


def _reversed_keyword_re(phrases: str, suffixes: str, punctuation: str) -> re.Pattern[str]:
    """Build a matcher for ``<phrase> [<suffix>] [<punctuation>]`` at the end of a string.

    `phrases` and `suffixes` are ``|``-separated; words inside a phrase are space-separated and
    match any run of whitespace.  The phrase must start at a word boundary.
    """

    def reverse(phrase: str) -> str:
        return r"\s+".join(re.escape(word[::-1]) for word in reversed(phrase.split()))

    phrase_alternatives = "|".join(reverse(phrase) for phrase in phrases.split("|"))
    suffix_alternatives = "|".join(reverse(s) for s in suffixes.split("|"))
    return re.compile(
        rf"\s*(?:[{punctuation}]\s*){{0,2}}(?:(?:{suffix_alternatives})\s*)?"
        rf"(?:{phrase_alternatives})(?![a-z])",
        re.IGNORECASE,
    )


def _phrases(*parts: str) -> str:
    """Expand "call|text" x "me|us" ... into every combination; "" makes a part optional."""
    combos = [""]
    for part in parts:
        combos = [f"{head} {word}".strip() for head in combos for word in part.split("|")]
    return "|".join(combos)


_PHONE_CONTEXT_RE = _reversed_keyword_re(
    "phone|tel|telephone|mobile|mob|cell|cellphone|fax|whatsapp|sms|landline|hotline|ph|dial|"
    + _phrases("call", "|me|us|him|her|them|back", "|at|on")
    + "|"
    + _phrases("text", "me|us", "|at|on")
    + "|"
    + _phrases("reach", "me|us|him|her|them", "at|on"),
    "number|no|no.|nr|nr.|#",
    r":=.\-(",
)
_ID_CONTEXT_RE = _reversed_keyword_re(
    "order|invoice|inv|ticket|case|ref|reference|po|sku|part|serial|s/n|sn|tracking|account|"
    "acct|id|no|nr|num|build|version|ver|release|batch|lot|txn|transaction|confirmation|"
    "booking|policy|claim|member|employee|container|shipment|parcel|pnr|incident|request|req|"
    "job|run|pid|uid|customer|cust|contract|quote|item|receipt|voucher|code|pin|otp|amount|"
    "total|qty|quantity|isbn|ean|upc|gtin|imei|msisdn|tag|asset",
    "number|no|no.|nr|nr.|id|#|num",
    r":#=.\-",
)
_VERSION_CONTEXT_RE = _reversed_keyword_re(
    "v|version|ver|release|rel|build|firmware|fw|rev|revision|section|sec|clause|chapter|ch|"
    "step|item|rule|oid|mib|patch|sdk|api|assembly|fileversion|productversion|§|"
    # products whose four-part version numbers look like addresses
    "android|ios|ipados|macos|windows|win|chrome|chromium|firefox|safari|edge|opera|java|jdk|"
    "jre|kernel|office",
    "number|no|no.|nr|nr.",
    r":#=",
)
_SSN_CONTEXT_RE = _reversed_keyword_re(
    "ssn|ss#|ss no|ss no.|social security|social security number|social security no|"
    "social security no.|social security #|tin|itin",
    "is|was",
    r":#=\-",
)


def _reversed_context(text: str, start: int, width: int = 40) -> str:
    """The `width` characters before `start`, reversed (for the `_*_CONTEXT_RE` matchers)."""
    return text[max(0, start - width) : start][::-1]


# --------------------------------------------------------------------------------------------
# Detectors.  Each appends (kind, start, end) for validated candidates to `found`.
# --------------------------------------------------------------------------------------------

_Finding = tuple[str, int, int]
# Pseudo-kind for spans that are known not to be PII but look like it (an IBAN with a wrong
# checksum): they take part in overlap resolution and are then dropped from the results.
_BLOCKER = "_blocker"

# Internationalised addresses (RFC 6531) count too: letters and digits of any script.
_LOCAL_PART_RE = re.compile(r"[\w.%+\-]{1,64}\Z")
_DOMAIN_RE = re.compile(
    r"(?:[^\W_](?:[^\W_]|-){0,62}\.)+([^\W\d_]{2,24}|xn--[a-z0-9\-]{2,59})(?![\w\-])",
    re.IGNORECASE,
)
# TLD-looking suffixes that are really file extensions (logo@2x.png, bundle@1.0.js, ...).
_FILE_EXTENSIONS = frozenset((
    "png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "tif", "tiff", "heic", "js", "mjs",
    "cjs", "css", "scss", "less", "ts", "tsx", "jsx", "vue", "java", "jar", "war", "class", "kt",
    "swift", "pyc", "whl", "egg", "zip", "gz", "tgz", "bz2", "xz", "tar", "rar", "7z", "log", "txt",
    "json", "yaml", "yml", "xml", "toml", "ini", "cfg", "conf", "lock", "html", "htm", "php", "exe",
    "dll", "bin", "iso", "dmg", "pkg", "msi", "pdf", "doc", "docx", "xls", "xlsx", "ppt", "pptx",
    "csv", "tsv", "mp3", "mp4", "wav", "mov", "avi", "mkv", "ttf", "otf", "woff", "woff2", "map",
))  # fmt: skip


def _in_url_authority(text: str, start: int) -> bool:
    """``scheme://user@host``: the user of a URL, not an address ("Email:jane@x.org" is)."""
    token_start = max(text.rfind(" ", 0, start), text.rfind("\n", 0, start)) + 1
    scheme = text.find("://", token_start, start)
    return scheme != -1 and "/" not in text[scheme + 3 : start]


def _scan_email(text: str, found: list[_Finding]) -> None:
    find = text.find
    at = find("@")
    while at != -1:
        next_at = find("@", at + 1)
        local = _LOCAL_PART_RE.search(text, max(0, at - 64), at)
        domain = _DOMAIN_RE.match(text, at + 1) if local is not None else None
        if local is not None and domain is not None:
            start, end = local.start(), domain.end()
            local_text = local.group()
            # Trim leading punctuation picked up from the surrounding prose ("(-alice@x.com").
            while local_text and local_text[0] in ".%+-":
                local_text = local_text[1:]
                start += 1
            tld = domain.group(1).lower()
            ok = (
                bool(local_text)
                and not local_text.endswith(".")
                and ".." not in local_text
                and tld not in _FILE_EXTENSIONS
                and (
                    start == 0
                    or text[start - 1] not in "/:@"
                    or (text[start - 1] != "@" and not _in_url_authority(text, start))
                )
            )
            if ok and end < len(text) and text[end] == ":":
                # scp-style remotes: git@github.com:org/repo.git
                ok = not (
                    end + 1 < len(text) and (text[end + 1].isalnum() or text[end + 1] in "/~")
                )
            if ok:
                found.append(("email", start, end))
        at = next_at


# Spelled-out addresses: "jane (at) example (dot) com", "jane[at]example.com",
# "jane at example dot com", "jane @ example dot com".  A bracketed "at" is an address on its
# own; the bare word "at" (everyday English) counts only with a spelled-out "dot" after it.
_OPEN, _CLOSE = r"[\[\(\{<]", r"[\]\)\}>]"
_SPELLED_AT = rf"(?P<at>\s*{_OPEN}\s*at\s*{_CLOSE}\s*|\s+at\s+|\s*@\s*)"
_SPELLED_DOT = rf"(?:\s*{_OPEN}\s*dot\s*{_CLOSE}\s*|\s+dot\s+|\.)"
_SPELLED_EMAIL_RE = re.compile(
    r"(?<![\w.%+\-])(?P<local>[\w%+\-]{1,64}(?:\.[\w%+\-]{1,64}){0,8})"
    + _SPELLED_AT
    + rf"(?P<domain>[^\W_][\w\-]{{0,62}}(?:{_SPELLED_DOT}[^\W_][\w\-]{{0,62}}){{1,8}})",
    re.IGNORECASE,
)
_SPELLED_DOT_RE = re.compile(_SPELLED_DOT, re.IGNORECASE)


def _scan_spelled_email(text: str, found: list[_Finding]) -> None:
    # Cheap necessary conditions first (each a C-level substring search): a spelled-out "dot",
    # a bracketed "at" ("(at)", "[at]"; other brackets come with a spelled "dot") or " @ ".
    lowered = text.lower()
    if not (
        "dot" in lowered or "at)" in lowered or "at]" in lowered or ("@" in text and "@ " in text)
    ):
        return
    for match in _SPELLED_EMAIL_RE.finditer(text):
        at = match.group("at")
        domain = match.group("domain")
        # "(at)", "[at]" and " @ " are addresses on their own; " at ", "@" and a one-sided
        # " @x" ("ping @bob.smith") only with a spelled-out dot.
        strong_at = at.strip().lower() not in ("at", "@") or (at[0].isspace() and at[-1].isspace())
        spelled_dot = any(dot.group() != "." for dot in _SPELLED_DOT_RE.finditer(domain))
        if not (strong_at or spelled_dot):
            continue  # a plain address (the e-mail scan) or prose: "look at example.com"
        address = f"{match.group('local')}@{_SPELLED_DOT_RE.sub('.', domain)}"
        confirmed: list[_Finding] = []
        _scan_email(address, confirmed)
        if confirmed and confirmed[0][2] == len(address):
            found.append(("email", match.start(), match.end()))


def _card_prefix_ok(digits: str) -> bool:
    """Plausible issuer identification number (IIN) for the card length."""
    length = len(digits)
    two = int(digits[:2])
    three = int(digits[:3])
    four = int(digits[:4])
    if digits[0] == "4":  # Visa
        return length in (13, 16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:  # Mastercard
        return length == 16
    if two in (34, 37):  # American Express
        return length == 15
    if two == 36 or 300 <= three <= 305 or two in (38, 39):  # Diners Club
        return 14 <= length <= 19
    if four == 6011 or 644 <= three <= 649 or two == 65:  # Discover
        return 16 <= length <= 19
    if 3528 <= four <= 3589:  # JCB
        return 16 <= length <= 19
    if two == 62:  # UnionPay
        return 16 <= length <= 19
    if two == 50 or 56 <= two <= 58 or two in (63, 67):  # Maestro
        return 12 <= length <= 19
    return False


def _card_groups_ok(candidate: str) -> bool:
    separators = {char for char in candidate if not char.isdigit()}
    if not separators:
        return True
    if len(separators) > 1:
        return False
    groups = candidate.split(separators.pop())
    sizes = [len(group) for group in groups]
    if sizes in ([4, 6, 5], [4, 6, 4]):  # Amex / Diners
        return True
    return all(size == 4 for size in sizes[:-1]) and 1 <= sizes[-1] <= 4


_DATE_PREFIX_RE = re.compile(
    r"(?:0?[1-9]|[12][0-9]|3[01])[ ./\-](?:0?[1-9]|1[0-2]|[12][0-9]|3[01])[ ./\-](?:19|20)[0-9]{2}"
)


def _phone_context_ok(text: str, start: int) -> bool | None:
    """True: labelled as a phone; False: labelled as an identifier; None: no opinion."""
    before = _reversed_context(text, start)
    if _PHONE_CONTEXT_RE.match(before):
        return True
    if _ID_CONTEXT_RE.match(before):
        return False
    return None


def _phone_separators_ok(candidate: str) -> bool:
    separators = [char for char in candidate if char in " .-/"]
    if separators.count("/") > 1 or (separators and "/" in separators[1:]):
        return False  # only "030/901820" style: a single slash after the area code
    return not ("." in separators and any(sep != "." for sep in separators))


# --- Digit-led kinds: one combined pass ---------------------------------------------------------
#
# Scanning the text once per kind is what makes naive detectors slow: each pass has to stop at
# every digit.  Instead, one regex stops at each *token-initial* digit, applies a cheap gate
# (a necessary prefix of one of the shapes) and then records, through optional look-aheads
# (``(?=(?P<name>...)|)``), every candidate shape that starts there.  Each named group holds
# the candidate *minus its first digit*: the span is ``(start, start + 1 + len(group))``.
_DIGIT_RE = re.compile(
    r"[0-9](?<![\w.][0-9])"
    # gate: a necessary prefix of at least one of the shapes below (dates, times, versions,
    # amounts and short numbers fail here, in C, without creating a match object)
    r"(?=[0-9]{3}[ \-]?[0-9]{4}|[0-9]{2}[\- ]?[0-9]{2}[\- ]?[0-9]{4}|[0-9]{0,2}\.[0-9]{1,3}\."
    r"|[0-9]\.[0-9]{3}\.[0-9]{3}|[0-9]{2}[ .\-][2-9][0-9]{2}[ .\-][0-9]{4}"
    r"|(?<=1)[ .\-]?\(?[2-9][0-9]{2}\)?[ .\-]?[2-9][0-9]{2}|(?<=0)[1-9](?:[ .\-/]{0,3}[0-9]){7}"
    r"|(?<=0)0[1-9])"
    # credit card: 13-19 digits, optional single space/dash separators
    r"(?=(?P<card>(?:[ \-]?[0-9]){12,18})(?![0-9])|)"
    # US SSN: AAA-GG-SSSS (space or no separator need an "SSN" label before it)
    r"(?=(?P<ssn>[0-9]{2}(?P<ssep>[\- ]?)[0-9]{2}(?P=ssep)[0-9]{4})(?![0-9])|)"
    # IPv4 dotted quad
    r"(?=(?P<ipv4>[0-9]{0,2}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})(?![0-9])|)"
    # Spanish DNI: 8 digits (optionally 12.345.678) and a check letter
    r"(?=(?P<dni>[0-9]\.?[0-9]{3}\.?[0-9]{3}-?[A-Z])(?!\w)|)"
    # US phone 415-555-0132 / 415.555.0132 / 415 555 0132
    r"(?=(?<=[2-9])(?P<us>[0-9]{2}(?P<usep>[ .\-])[2-9][0-9]{2}(?P=usep)[0-9]{4})(?![0-9])|)"
    # US phone with the 1 prefix: 1-800-555-0199, 1 (800) 555-0175
    r"(?=(?<=1)(?P<us1>[ .\-]?(?:\([2-9][0-9]{2}\) ?[2-9][0-9]{2}[ .\-]?|"
    r"[2-9][0-9]{2}(?P<usep1>[ .\-])[2-9][0-9]{2}(?P=usep1))[0-9]{4})(?![0-9])|)"
    # European national format with trunk 0: 020 7946 0958, 030/901820, 06 12 34 56 78 and the
    # older German "040 - 123 456 78"
    r"(?=(?<![\-/:]0)(?<=0)(?=[1-9])(?P<natl>(?:[0-9]|[ .\-/](?=[0-9])| [\-/] (?=[0-9])){5,16})"
    r"(?![0-9])|)"
    # international with 00 instead of +: 0044 20 7946 0958
    r"(?=(?<=0)(?P<intl00>0[1-9](?:[0-9]|[ .\-](?=[0-9]|\([0-9]{1,4}\))|\([0-9]{1,4}\)){6,24})"
    r"(?![0-9])|)"
    # bare digit run: a phone number only when labelled ("phone: 4155550123")
    r"(?=(?P<bare>[0-9]{8,11})(?![0-9])|)"
)
_PHONE_PLUS_RE = re.compile(
    r"\+(?<![\w+]\+)[1-9](?:[0-9]|[ .\-](?=[0-9]|\([0-9]{1,4}\))|\([0-9]{1,4}\)){6,24}(?![0-9])"
)
_PHONE_PAREN_RE = re.compile(
    r"\((?:(?P<us>[2-9][0-9]{2}\) ?[2-9][0-9]{2}[ .\-]?[0-9]{4})|"
    r"(?P<natl>0[1-9][0-9]{0,3}\) ?(?:[0-9]|[ .\-/](?=[0-9])){5,16}))(?![0-9])"
)
# Upper-case-led kinds: IBAN, UK NINO, Spanish NIE.
_UPPER_RE = re.compile(
    r"[A-Z](?<![\w][A-Z])"
    r"(?=[A-Z] ?[0-9]{2}|(?<=[XYZ])-?[0-9]{7})"
    r"(?=(?P<iban>[A-Z][0-9]{2}(?: ?[A-Z0-9]){11,30})|)"
    r"(?=(?P<nino>[A-Z] ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D])(?![\w])|)"
    r"(?=(?<=[XYZ])(?P<nie>-?[0-9]{7}-?[A-Z])(?![\w])|)"
)


def _check_card(text: str, start: int, end: int) -> bool:
    if not _left_ok(text, start) or not _right_ok(text, end):
        return False
    candidate = text[start:end]
    if not _card_groups_ok(candidate):
        return False
    digits = candidate.replace(" ", "").replace("-", "")
    return _card_prefix_ok(digits) and luhn_is_valid(digits)


def _check_ssn(text: str, start: int, end: int, separator: str) -> bool:
    if not _left_ok(text, start) or not _right_ok(text, end):
        return False
    if separator != "-" and not _SSN_CONTEXT_RE.match(_reversed_context(text, start)):
        return False  # "123 45 6789" and bare 9-digit numbers need an explicit SSN label
    digits = text[start:end].replace("-", "").replace(" ", "")
    return ssn_is_valid(digits[:3], digits[3:5], digits[5:])


def _is_netmask(octets: list[int]) -> bool:
    """255.255.255.0 and friends: a contiguous run of one bits is a subnet mask, not a host."""
    if octets[0] != 255:
        return False
    value = (octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3]
    host_bits = ~value & 0xFFFFFFFF
    return host_bits & (host_bits + 1) == 0


def _check_ipv4(text: str, start: int, end: int) -> bool:
    if start > 0 and text[start - 1] in "-+":
        return False
    if end < len(text):
        nxt = text[end]
        if _is_word(nxt):
            return False
        if nxt in ".-" and end + 1 < len(text) and text[end + 1].isalnum():
            return False  # 1.3.6.1.4.1 (OID), 1.2.3.4-beta
    octets = [int(octet) for octet in text[start:end].split(".")]
    if any(octet > 255 for octet in octets) or _is_netmask(octets):
        return False
    return not _VERSION_CONTEXT_RE.match(_reversed_context(text, start, 24))


def _check_dni(text: str, start: int, end: int) -> bool:
    if not _left_ok(text, start) or not _right_ok(text, end):
        return False
    compact = text[start:end].replace(".", "").replace("-", "")
    return len(compact) == 9 and dni_is_valid(compact)


def _check_phone(text: str, start: int, end: int, form: str) -> bool:
    """Validate a phone candidate; `form` is the shape that proposed it."""
    candidate = text[start:end]
    if form in ("plus", "intl00"):
        digits = sum(char.isdigit() for char in candidate.replace("(0)", ""))
        minimum = 8
        if form == "intl00":
            # "0044 20 7946 0958": the 00 trunk form needs separators and a full-length number.
            digits -= 2
            minimum = 10
            if not any(char in " .-(" for char in candidate):
                return False
        if not minimum <= digits <= 15 or not _phone_separators_ok(candidate):
            return False
        if not _right_ok(text, end) or (start > 0 and _is_word(text[start - 1])):
            return False
        if form == "intl00" and not _left_ok(text, start):
            return False
        return _phone_context_ok(text, start) is not False
    if not _left_ok(text, start) or not _right_ok(text, end):
        return False
    context = _phone_context_ok(text, start)
    if form == "bare":
        return context is True
    if context is False:
        return False
    if form == "us":
        return True
    # European national format.
    digits = sum(char.isdigit() for char in candidate)
    if not 9 <= digits <= 12:
        return False
    groups = [group for group in _PHONE_GROUP_SPLIT_RE.split(candidate) if group]
    if len(groups) == 1 and not candidate.startswith("(") and context is not True:
        return False  # bare "07700900123" needs a phone keyword
    compact = candidate.replace(" / ", "/")
    if any(len(group) < 2 for group in groups) or not _phone_separators_ok(compact):
        return False
    for spaced in (" - ", " / "):
        if spaced in candidate and (
            candidate.count(spaced) > 1 or candidate.index(spaced) != len(groups[0])
        ):
            return False  # "040 - 123 456 78", "030 / 901820": only after the area code
    return _DATE_PREFIX_RE.match(candidate) is None


_PHONE_GROUP_SPLIT_RE = re.compile(r"[ .\-/()]+")


def _scan_digits(text: str, found: list[_Finding]) -> None:
    append = found.append
    for match in _DIGIT_RE.finditer(text):
        start = match.start()
        groups = match.groups()
        # Each named group holds a candidate minus its first digit (see _DIGIT_RE).
        for index, kind, form in _DIGIT_GROUPS:
            value = groups[index]
            if value is None:
                continue
            end = start + 1 + len(value)
            if kind == "credit_card":
                ok = _check_card(text, start, end)
            elif kind == "us_ssn":
                ok = _check_ssn(text, start, end, groups[_SSN_SEPARATOR] or "")
            elif kind == "ip_address":
                ok = _check_ipv4(text, start, end)
            elif kind == "es_dni":
                ok = _check_dni(text, start, end)
            else:
                ok = _check_phone(text, start, end, form)
            if ok:
                append((kind, start, end))


_DIGIT_GROUPS: tuple[tuple[int, str, str], ...] = tuple(
    (_DIGIT_RE.groupindex[group] - 1, kind, form)
    for group, kind, form in (
        ("card", "credit_card", ""),
        ("ssn", "us_ssn", ""),
        ("ipv4", "ip_address", ""),
        ("dni", "es_dni", ""),
        ("us", "phone", "us"),
        ("us1", "phone", "us"),
        ("natl", "phone", "natl"),
        ("intl00", "phone", "intl00"),
        ("bare", "phone", "bare"),
    )
)
_SSN_SEPARATOR = _DIGIT_RE.groupindex["ssep"] - 1


def _scan_plus_phones(text: str, found: list[_Finding]) -> None:
    for match in _PHONE_PLUS_RE.finditer(text):
        start, end = match.span()
        if _check_phone(text, start, end, "plus"):
            found.append(("phone", start, end))


def _scan_paren_phones(text: str, found: list[_Finding]) -> None:
    for match in _PHONE_PAREN_RE.finditer(text):
        start, end = match.span()
        if _check_phone(text, start, end, "us" if match.group("us") else "natl"):
            found.append(("phone", start, end))


def _iban_shape_end(candidate: str) -> int:
    """Length of the longest prefix printed like an IBAN: compact, or groups of four."""
    if " " not in candidate:
        return len(candidate)
    used = 0
    for index, group in enumerate(candidate.split(" ")):
        used += len(group) + (1 if index else 0)
        if len(group) != 4:
            break
    return used


def _check_iban(text: str, start: int, candidate: str, found: list[_Finding]) -> None:
    expected = IBAN_LENGTHS.get(candidate[:2])
    if expected is None:
        return
    # Take exactly `expected` alphanumerics; the next character must end the group.
    count = 0
    cut = len(candidate)
    for index, char in enumerate(candidate):
        if char != " ":
            count += 1
            if count == expected:
                cut = index + 1
                break
    value = candidate[:cut]
    end = start + cut
    if (
        count == expected
        and (cut == len(candidate) or candidate[cut] == " ")
        and _iban_shape_end(value) == cut
        and (_right_ok(text, end) or text[end] == " ")
        and iban_is_valid(value.replace(" ", ""))
    ):
        found.append(("iban", start, end))
        return
    shape = _iban_shape_end(candidate)
    if shape >= 15:
        # Shaped like an IBAN of a known country but invalid (wrong length or check digits):
        # not reported, but it stops the digit groups inside it being read as phone numbers.
        found.append((_BLOCKER, start, start + shape))


# IBANs printed in lower case or grouped with dashes ("de89 3704 …", "DE89-3704-…"), which
# the upper-case scan above does not read: the same country length and mod-97 check, after
# upper-casing, in groups of four with one kind of separator.
_IBAN_LOOSE_RE = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}[0-9]{2}(?:[ \-]?[A-Za-z0-9]){11,30}")


def _scan_iban_loose(text: str, found: list[_Finding]) -> None:
    for match in _IBAN_LOOSE_RE.finditer(text):
        candidate = match.group()
        if "-" not in candidate and not any(c.islower() for c in candidate):
            continue  # upper case with spaces or none: the upper-case scan's
        expected = IBAN_LENGTHS.get(candidate[:2].upper())
        if expected is None:
            continue
        separator = "-" if "-" in candidate[:5] else " " if " " in candidate[:5] else ""
        groups = candidate.split(separator) if separator else [candidate]
        taken: list[str] = []
        count = 0
        for group in groups:
            if " " in group or "-" in group or (separator and len(group) > 4):
                break  # mixed separators, or not groups of four
            take = group[: expected - count]
            taken.append(take)
            count += len(take)
            if count == expected or len(group) != 4:
                break
        if count != expected or (separator and len(taken[-1]) != len(groups[len(taken) - 1])):
            continue
        end = match.start() + len(separator.join(taken))
        if not _right_ok(text, end) and text[end] not in " -":
            continue
        if iban_is_valid("".join(taken).upper()):
            found.append(("iban", match.start(), end))


def _scan_upper(text: str, found: list[_Finding]) -> None:
    for match in _UPPER_RE.finditer(text):
        start = match.start()
        iban = match.group("iban")
        if iban is not None:
            _check_iban(text, start, text[start : match.end("iban")], found)
        end = match.end("nino")
        if (
            end != -1
            and _left_ok(text, start)
            and _right_ok(text, end)
            and nino_is_valid(text[start:end].replace(" ", ""))
        ):
            found.append(("uk_nino", start, end))
        end = match.end("nie")
        if end != -1 and _check_dni(text, start, end):
            found.append(("es_dni", start, end))


_HEX = frozenset("0123456789abcdefABCDEF:")
# "::", or a colon with a hex digit on its left and another colon within four hex digits.
_IPV6_SEED_RE = re.compile(r":(?::|(?<=[0-9A-Fa-f]:)(?=[0-9A-Fa-f]{0,4}:))")
_IPV6_BODY_RE = re.compile(r"[0-9A-Fa-f:]+(?:\.[0-9]{1,3}){0,3}")


def _scan_ipv6(text: str, found: list[_Finding]) -> None:
    pos = 0
    length = len(text)
    search = _IPV6_SEED_RE.search
    while True:
        seed = search(text, pos)
        if seed is None:
            return
        start = seed.start()
        while start > 0 and text[start - 1] in _HEX:
            start -= 1
        body = _IPV6_BODY_RE.match(text, start)
        end = body.end() if body is not None else seed.end()
        pos = max(end, seed.end())
        if start > 0 and (_is_word(text[start - 1]) or text[start - 1] in ".%"):
            continue
        if end < length and (_is_word(text[end]) or text[end] == ":"):
            continue
        candidate = text[start:end]
        if candidate.count(":") < 2 or candidate == "::":
            continue
        if "::" not in candidate and candidate.count(":") != 7 and "." not in candidate:
            continue  # 10:30:00, 00:1A:2B:3C:4D:5E
        # "a::b" style tokens: require some digit so C++/Perl scope operators are not flagged.
        if not any(char.isdigit() for char in candidate):
            continue
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        found.append(("ip_address", start, end))


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------

_ANY_DIGIT_RE = re.compile(r"[0-9]")


def _candidates(text: str) -> list[_Finding]:
    found: list[_Finding] = []
    if "@" in text:
        _scan_email(text, found)
    _scan_spelled_email(text, found)
    if _ANY_DIGIT_RE.search(text) is not None:
        _scan_digits(text, found)
        _scan_upper(text, found)
        _scan_iban_loose(text, found)
        if "+" in text:
            _scan_plus_phones(text, found)
        if "(" in text:
            _scan_paren_phones(text, found)
        if ":" in text:
            _scan_ipv6(text, found)
    return found


def _resolve(found: list[_Finding]) -> tuple[PiiMatch, ...]:
    """Drop candidates overlapping a higher-priority (or earlier, longer) accepted match."""
    if len(found) <= 1:
        return tuple(PiiMatch(kind, start, end) for kind, start, end in found if kind != _BLOCKER)
    found.sort(key=lambda item: (_PRIORITY[item[0]], item[1], item[1] - item[2]))
    starts: list[int] = []  # accepted, non-overlapping, sorted by start
    ends: list[int] = []
    kinds: list[str] = []
    for kind, start, end in found:
        index = bisect_left(starts, start)
        if index > 0 and ends[index - 1] > start:
            continue
        if index < len(starts) and starts[index] < end:
            continue
        starts.insert(index, start)
        ends.insert(index, end)
        kinds.insert(index, kind)
    return tuple(
        PiiMatch(k, s, e) for k, s, e in zip(kinds, starts, ends, strict=True) if k != _BLOCKER
    )


def pii_scan(text: str) -> tuple[PiiMatch, ...]:
    """Return every validated PII match, ordered by position, non-overlapping.

    Offsets index into ``pii_normalize(text)`` (the same string for plain ASCII text).
    """
    if not text:
        return ()
    return _resolve(_candidates(pii_normalize(text)))


def pii_types(text: str) -> tuple[str, ...]:
    """Return the sorted unique PII kinds present in ``text`` (the routing hot path).

    Raises :class:`UnscannableText` for text that cannot be scanned (treat it as personal).
    """
    if not text:
        return ()
    found = _candidates(pii_normalize(text))
    if not found:
        return ()
    kinds = {kind for kind, _, _ in found}
    if len(kinds) == 1 and _BLOCKER not in kinds:
        return (found[0][0],)  # a single kind: overlap resolution cannot remove all of them
    return tuple(sorted({match.kind for match in _resolve(found)}))


# --------------------------------------------------------------------------------------------
# The request-level policy gate: every free-text field of a decision request
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestScan:
    """What the detector found in a decision request.

    ``types``: sorted PII kinds found in any field.  ``failed``: some field could not be
    scanned (detector error, unscannable text) - the request must be treated as personal.
    ``personal_metadata_keys``: metadata entries whose key or value holds personal data (or
    could not be scanned); ``personal_document_ids``: indexes of such retrieval document ids.
    """

    types: tuple[str, ...] = ()
    failed: bool = False
    personal_metadata_keys: frozenset[str] = frozenset()
    personal_document_ids: frozenset[int] = frozenset()
    personal_template: bool = False


_CLEAN = RequestScan()
# Joins the texts of one field family into one scan.  "|" is no word character, whitespace
# or punctuation that a detector or a context label ("Order no.") could read across.
_FIELD_SEPARATOR = "\n|\n"


def _scan_texts(texts: Sequence[str], types: set[str]) -> tuple[bool, set[int]]:
    """Scan several texts; return (failed, indexes of the texts holding personal data).

    One scan over the joined texts answers the common case (nothing found); only when it finds
    something are the texts scanned one by one to say which.
    """
    if not any(texts):
        return False, set()
    try:
        joined = pii_types(_FIELD_SEPARATOR.join(texts))
        if not joined:
            return False, set()
        if len(texts) == 1:
            types.update(joined)
            return False, {0}
        # What the joined text holds may straddle two fields (an obfuscated "at … dot com"
        # across the separator): the fields on their own decide.
        flagged: set[int] = set()
        for index, text in enumerate(texts):
            found = pii_types(text)
            if found:
                types.update(found)
                flagged.add(index)
        return False, flagged
    except Exception:  # fail closed: a field we could not read is personal
        logger.exception("PII detection failed")
        return True, set(range(len(texts)))


def _metadata_text(key: str, value: MetadataValue) -> str:
    # The key is the value's label ("phone: 4155550123"), as a label in prose would be.  A
    # number below a million cannot be any kind we detect (the shortest takes eight digits).
    if value is None or isinstance(value, bool):
        return key
    if isinstance(value, int | float) and -1_000_000 < value < 1_000_000:
        return key
    return f"{key}: {value}"


def request_scan(data: DecisionInput) -> RequestScan:
    """Scan every free-text field of a decision request that is stored or could be forwarded.

    The prompt, the retrieval query, the retrieval document ids, the prompt template id and
    version (identifiers, but free-form strings the caller controls and we store) and every
    metadata key and value (numbers included: a card number fits in a JSON integer).  The
    ``end_user`` is not scanned: it is only stored as a keyed hash and never forwarded.
    """
    types: set[str] = set()
    failed = False
    if data.prompt:
        failed, _ = _scan_texts([data.prompt], types)
    retrieval = data.retrieval
    template = data.prompt_template
    query = retrieval.query if retrieval else ""
    template_texts = [template.id, template.version] if template else []
    document_texts = retrieval.document_ids if retrieval else []
    metadata = data.metadata or {}
    keys = list(metadata)
    metadata_texts = [_metadata_text(key, metadata[key]) for key in keys]
    # The other fields are short: one scan of them all answers the common case (nothing
    # personal).  The separator keeps the fields apart, so that scan finds nothing exactly
    # when every field on its own finds nothing; otherwise they are scanned field by field.
    rest = [query, *template_texts, *document_texts, *metadata_texts]
    try:
        clean = not any(rest) or not pii_types(_FIELD_SEPARATOR.join(rest))
    except Exception:  # the field-by-field scans below fail closed (and log)
        clean = False
    if clean:
        if not types and not failed:
            return _CLEAN
        return RequestScan(types=tuple(sorted(types)), failed=failed)
    query_failed, _ = _scan_texts([query], types)
    template_failed, template_flags = _scan_texts(template_texts, types)
    documents_failed, document_flags = _scan_texts(document_texts, types)
    metadata_failed, metadata_flags = _scan_texts(metadata_texts, types)
    failed = failed or query_failed
    return RequestScan(
        types=tuple(sorted(types)),
        failed=failed or template_failed or documents_failed or metadata_failed,
        personal_metadata_keys=frozenset(keys[index] for index in metadata_flags),
        personal_document_ids=frozenset(document_flags),
        personal_template=bool(template_flags),
    )


@dataclass(frozen=True, slots=True)
class StoredFreeText:
    """The free-text fields of a decision as they may be stored."""

    retrieval_query: str
    retrieval_document_ids: tuple[str, ...]
    prompt_template_id: str
    prompt_template_version: str
    metadata: dict[str, MetadataValue]
    expires: bool  # something here (or the prompt) must be forgotten at prompt_expires_at


def _personal(text: str) -> bool:
    try:
        return bool(pii_types(text))
    except Exception:  # fail closed
        return True


def request_free_text_stored(
    data: DecisionInput, scan: RequestScan, *, keep_days: int
) -> StoredFreeText:
    """Apply the task class's prompt retention to every free-text field, not only the prompt.

    * ``keep_days == 0`` (the class keeps no prompts): the retrieval query is not stored, and
      metadata keeps its keys, booleans and numbers while every string value is stored as null.
    * ``keep_days > 0``: they are stored and forgotten with the prompt (``prompt_expires_at``,
      ``telemetry.retention.decision_prompts_purge`` blanks the query and string values).
    * Always: identifiers and metadata values in which personal data was found are never
      stored - the purge does not reach identifiers, keys or numbers, and a class's prompt
      retention is not a reason to keep labels that carry personal data (the value is stored
      as null; a key that is itself personal is dropped with its value).
    """
    keep = keep_days > 0
    retrieval = data.retrieval
    template = data.prompt_template
    metadata: dict[str, MetadataValue] = {}
    expires = keep and bool(data.prompt)
    for key, value in (data.metadata or {}).items():
        if key in scan.personal_metadata_keys:
            if not _personal(key):
                metadata[key] = None
            continue
        if isinstance(value, str):
            metadata[key] = value if keep else None
            expires = expires or (keep and bool(value))
        else:
            metadata[key] = value
    query = retrieval.query if retrieval and keep else ""
    return StoredFreeText(
        retrieval_query=query,
        retrieval_document_ids=tuple(
            doc
            for index, doc in enumerate(retrieval.document_ids if retrieval else ())
            if index not in scan.personal_document_ids
        ),
        prompt_template_id=template.id if template and not scan.personal_template else "",
        prompt_template_version=(
            template.version if template and not scan.personal_template else ""
        ),
        metadata=metadata,
        expires=expires or bool(query),
    )


def request_sensitive(
    pii_types: Sequence[str], detection_failed: bool, classification: str | None
) -> bool:
    """Whether a request carries personal (or confidential) data: detected, declared
    (``personal``, ``confidential`` or an unknown label), or undecidable (detection failed)
    — the cases the engine keeps on local models."""
    return (
        bool(pii_types)
        or detection_failed
        or (classification is not None and classification not in OPEN_CLASSIFICATIONS)
    )
