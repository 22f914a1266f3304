"""Personal data in text: detection of email addresses, phone numbers, IPv4/IPv6 addresses,
credit-card numbers and IBANs, and masking with typed placeholders (``<|email|>``, ...).

One pass per text, with precompiled regexes: emails around each ``@``, the other types as one
alternation that finds every candidate left to right; the shapes a regex cannot judge are
checked in code (a card's Luhn sum and issuer prefix, an IBAN's
country length and mod-97 check, IPv4 octets up to 255, IPv6 via ``ipaddress``). A candidate that
fails its check is offered to the detectors after it at the same position (a 16-digit order
number that fails Luhn is not a card, and not a phone either unless it has a phone's shape).

False positives guarded against, by shape (docs/data.md has the measured precision):
- phone: ``+`` and a country code (``+44 20 7946 0958``), or North American with separators
  (``555-234-5678``, ``(415) 555-2671``), whose area code and exchange start with 2-9, or
  Brazilian (``(11) 98620-2614``) or French pairs (``01 23 45 67 89``); other national layouts
  (``020 7946 0958``, ``03-1234-5678``) only after a word that says phone; so dates
  (``2002-08-22``, ``08/22/2002``), zip+4 (``12345-6789``), SSN-like ids (3-2-4), bare digit
  runs and version numbers do not match;
- IPv6: eight groups, or ``::`` with at least two groups, one of 3-4 digits: times
  (``12:30:45``), verses (``3:20::``) and MAC addresses (six groups of two) do not match;
- IPv4: not inside a longer dotted number (``1.2.3.4.5``: an OID or version), and a quad led by
  a single digit (``1.6.4.2``: a CVS revision) only in a host context (``http://4.3.2.1/``);
- email: the "TLD" must not be an image or file extension (``logo@2x.png``); written out only
  with brackets or capitals (``name [at] example [dot] com``), never the bare words.
Speed: emails are looked for only around an ``@`` (written-out ones where ``[at]`` or ``AT``
is); the other detectors only in small windows around clusters of digits (most text has
neither), the phone layouts that need a phone word only in a text that has one.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

PII_TYPES = ("email", "phone", "ipv4", "ipv6", "credit_card", "iban")
PLACEHOLDERS = {kind: f"<|{kind}|>" for kind in PII_TYPES}

# ASCII lookarounds: an address runs into CJK text or a line of underscores or dashes.
_EMAIL = (
    r"(?<![A-Za-z0-9._+-])[A-Za-z0-9][A-Za-z0-9._+-]{0,63}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
    r"(?![A-Za-z0-9]|[.-][A-Za-z0-9])"
)
# Written out to fool harvesters: "name [at] example [dot] com", "(at)", "{at}", " AT ... DOT ";
# a real dot may stand for a [dot]. The bare lower-case words ("name at example dot com") are
# not taken: "look at this dot com bubble" has the same shape.
_AT_WORD = r"(?:\s?[\[({]\s?(?:at|AT|At)\s?[\])}]\s?|\sAT\s)"
_DOT_WORD = r"(?:\s?[\[({]\s?(?:dot|DOT|Dot)\s?[\])}]\s?|\sDOT\s|\.)"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_OBFUSCATED_EMAIL = re.compile(
    rf"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._+-]{{0,63}}{_AT_WORD}(?:{_LABEL}{_DOT_WORD})+"
    r"[A-Za-z]{2,24}(?![\w]|[.-]\w)"
)
# Where a written-out address can be (also RE2's syntax: the columnar path's filter).
AT_WORD_HINT = r"[\[({]\s?(?:at|AT|At)\s?[\])}]|\sAT\s"
_AT_HINT = re.compile(AT_WORD_HINT)
_AT_MARKS = ("t]", "t)", "t}", "t ]", "t )", "t }", "AT")  # str scans, ten times the regex's
_H = r"[0-9A-Fa-f]{1,4}"
_IPV6 = rf"(?<![\w:.])(?:{_H})?(?::(?:{_H})?){{2,7}}(?![\w:]|\.\d)"
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)"
_IBAN = r"(?<![\w])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![\w])"
_CARD = r"(?<![\w.-])(?:\d{4}[ -]\d{6}[ -]\d{5}|\d{4}(?:[ -]?\d{4}){2}[ -]?\d{1,7})(?![\w]|[.-]\d)"
_SEP = r"[ .-]"
_PHONE = (
    r"(?<![\w.+/-])(?:"
    # international: +CC, an optional (0) or (area), then digit groups (8-15 digits checked)
    rf"\+\d{{1,3}}(?:{_SEP}?\(\d{{1,4}}\))?{_SEP}?\d{{1,8}}(?:{_SEP}\d{{1,8}}){{0,5}}"
    # North American: optional 1, (area) or area+separator, exchange, separator, line
    rf"|(?:1{_SEP}?)?(?:\([2-9]\d\d\) ?|[2-9]\d\d{_SEP})[2-9]\d\d{_SEP}\d{{4}}"
    # Brazil: (area) 4-5 digits - 4 digits
    r"|\([1-9]\d\) ?9?\d{4}-\d{4}"
    # France: the trunk 0 and four pairs (01 23 45 67 89, 06.81.13.01.39)
    r"|0[1-9](?:[ .]\d\d){4}"
    "{worded}"
    r")(?!\d|[.-]\d)"  # a letter may follow: "703-724-0118W" (work), "...0407Fax"
)
# The rest only after a word that says phone (_phone_stands), and only looked for in a text
# with one (_PHONE_WORDS): national, with the trunk 0 (020 7946 0958, 030 123 45678,
# 03-1234-5678, 09044-991053, (04) 747 0943), and international without a plus (852 23079338,
# 44-870-136-7079, + 225 0771 1719).
_WORDED_PHONE = (
    r"|\(?0[1-9]\d{0,3}\)?(?:[ /.-]\d{2,8}){1,4}"
    r"|(?:\+ |00[ -]?)?\(?\d{1,4}\)?(?:[ ./-]{1,2}\d{1,8}){1,5}"
)
_PHONE, _LONE_ONLY = _PHONE.replace("{worded}", _WORDED_PHONE), _PHONE.replace("{worded}", "")
# The phone layouts that stand alone: +CC, North American, Brazilian, French.
_LONE_PHONE = re.compile(
    rf"\+\d.*|(?:1{_SEP}?)?(?:\([2-9]\d\d\) ?|[2-9]\d\d{_SEP})[2-9]\d\d{_SEP}\d{{4}}"
    r"|\([1-9]\d\) ?9?\d{4}-\d{4}|0[1-9](?:[ .]\d\d){4}",
    re.S,
)
_PHONE_WORD = re.compile(
    r"(?i)(?:(?<!\|)\b(?:tel|tele?phone|phone|fon|telefon|call|mobile|mob|cell|fax|handy|sms|"
    r"whatsapp|hotline|dial|t[ée]l|t[ée]l[ée]phone|portable|contact)\b|☎|📞)[^\n\d]{0,12}$"
)
_PHONE_WORDS = ("tel", "phone", "fon", "call", "mob", "cell", "fax", "handy", "sms", "whatsapp")
_PHONE_WORDS += ("hotline", "dial", "tél", "portable", "contact", "☎", "📞")
_ORDER = ("email", "ipv6", "ipv4", "iban", "credit_card", "phone")
_SINGLE = {
    "email": _EMAIL,
    "ipv6": _IPV6,
    "ipv4": _IPV4,
    "iban": _IBAN,
    "credit_card": _CARD,
    "phone": _PHONE,
}
_EACH = {k: re.compile(_SINGLE[k]) for k in _ORDER}
_NUMERIC = _ORDER[1:]
_ANY_NUMERIC = re.compile("|".join(f"(?P<{k}>{_SINGLE[k]})" for k in _NUMERIC))
_NO_PHONE_WORD = re.compile(
    "|".join(f"(?P<{k}>{_LONE_ONLY if k == 'phone' else _SINGLE[k]})" for k in _NUMERIC)
)
# Every numeric match holds a digit (an IPv6 address without one is not looked for): only
# windows around the clusters of digit runs (and colons after them; runs less than
# _BEFORE + _AFTER apart make one cluster, found by the regex engine, not a Python loop).
_BEFORE, _AFTER = 4, 6  # window margins: "+44 ", "(555", "GB82"; " WEST " between groups
_CLUSTER = re.compile(rf"\d[\d:]*(?:\D{{0,{_BEFORE + _AFTER}}}\d[\d:]*)*")
_HEX = frozenset("0123456789abcdefABCDEF:")

_FILE_EXTENSIONS = {"png", "jpg", "jpeg", "gif", "bmp", "svg", "webp", "tif", "tiff", "ico"}
# ISO 13616 lengths of the IBAN countries (SWIFT's IBAN registry, release 101): a wrong length is
# not an IBAN whatever its check, and the length is where an IBAN written in groups ends when
# another code follows it ("DE89 3704 0044 0532 0130 00 BIC COBADEFFXXX").
_IBAN_LENGTHS = {
    **dict.fromkeys(["NO"], 15),
    **dict.fromkeys(["BE"], 16),
    **dict.fromkeys(["DK", "FI", "FK", "FO", "GL", "NL", "SD"], 18),
    **dict.fromkeys(["MK", "SI"], 19),
    **dict.fromkeys(["AT", "BA", "EE", "KZ", "LT", "LU", "MN", "XK"], 20),
    **dict.fromkeys(["CH", "HR", "LI", "LV"], 21),
    **dict.fromkeys(["BG", "BH", "CR", "DE", "GB", "GE", "IE", "ME", "RS", "VA"], 22),
    **dict.fromkeys(["AE", "GI", "IL", "IQ", "OM", "SO", "TL"], 23),
    **dict.fromkeys(["AD", "CZ", "ES", "MD", "PK", "RO", "SA", "SE", "SK", "TN", "VG"], 24),
    **dict.fromkeys(["LY", "PT", "ST"], 25),
    **dict.fromkeys(["IS", "TR"], 26),
    **dict.fromkeys(["BI", "DJ", "FR", "GR", "IT", "MC", "MR", "SM"], 27),
    **dict.fromkeys(["AL", "AZ", "BY", "CY", "DO", "GT", "HN", "HU", "LB", "NI", "PL", "SV"], 28),
    **dict.fromkeys(["BR", "EG", "PS", "QA", "UA"], 29),
    **dict.fromkeys(["JO", "KW", "MU", "YE"], 30),
    **dict.fromkeys(["MT", "SC"], 31),
    **dict.fromkeys(["LC"], 32),
    **dict.fromkeys(["RU"], 33),
}


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_prefix_ok(d: str) -> bool:
    """Issuer ranges (Visa, Mastercard, Amex, Discover, JCB, Diners) with their lengths."""
    n, p2, p4 = len(d), int(d[:2]), int(d[:4])
    return (
        (d[0] == "4" and n in (13, 16, 19))
        or ((51 <= p2 <= 55 or 2221 <= p4 <= 2720) and n == 16)
        or (p2 in (34, 37) and n == 15)
        or ((d.startswith("6011") or p2 == 65 or 644 <= int(d[:3]) <= 649) and n in (16, 19))
        or (3528 <= p4 <= 3589 and n in (16, 19))
        or ((300 <= int(d[:3]) <= 305 or p2 in (36, 38)) and n == 14)
    )


def _valid(kind: str, s: str) -> bool:
    if kind == "email":
        return s.rsplit(".", 1)[1].lower() not in _FILE_EXTENSIONS
    if kind == "credit_card":
        d = s.replace(" ", "").replace("-", "")
        return 13 <= len(d) <= 19 and _card_prefix_ok(d) and luhn_ok(d)
    if kind == "iban":
        code = s.replace(" ", "")
        if _IBAN_LENGTHS.get(code[:2]) != len(code):
            return False
        moved = code[4:] + code[:4]
        return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1
    if kind == "ipv6":
        groups = [g for g in s.split(":") if g]
        if "::" in s:  # compressed: a real prefix has a 3- or 4-digit group (2001:, fe80:, fd00:)
            if len(groups) < 2 or max(map(len, groups)) < 3:  # not "3:20::" (a verse)
                return False
        elif len(groups) != 8:
            return False
        try:
            ipaddress.IPv6Address(s)
        except ValueError:
            return False
        return True
    if kind == "phone":
        n = sum(ch.isdigit() for ch in s)
        if s.startswith("+"):
            return 8 <= n <= 15
        return n in (10, 11) if _LONE_PHONE.fullmatch(s) else 9 <= n <= 15
    return True  # ipv4: the octet ranges are in the regex; the host context in _ipv4_host


def _ipv4_host(text: str, start: int, end: int) -> bool:
    """A dotted quad led by a single digit (1.6.4.2: a CVS revision, 3.1.0.2: a version) is an
    address only where a host stands: after ``//``, ``@``, ``[`` or ``(``, or before ``/``, ``:``,
    ``]`` or ``)``."""
    if text[start + 1] == ".":
        return text[max(0, start - 2) : start] == "//" or (
            (start and text[start - 1] in "@[(") or (end < len(text) and text[end] in "/:])")
        )
    return True


@dataclass(frozen=True)
class Match:
    kind: str
    start: int
    end: int
    text: str


class Allow:
    """Matches left alone: exact values (case-insensitive), or ``@domain`` for every address of
    the domain and its subdomains."""

    def __init__(self, entries: Iterable[str] = ()):
        entries = [e.strip().lower() for e in entries if e.strip()]
        self.values = {e for e in entries if not e.startswith("@")}
        domains = [e for e in entries if e.startswith("@")]
        self.domains = tuple(domains + ["." + d[1:] for d in domains])

    def __call__(self, match: Match) -> bool:
        value = match.text.lower()
        return value in self.values or (match.kind == "email" and value.endswith(self.domains))

    def __bool__(self) -> bool:
        return bool(self.values or self.domains)


_NO_ALLOW = Allow()


def _windows(text: str) -> list[tuple[int, int]]:
    """Spans around the clusters of digit runs; a window opens before the hex digits and
    colons that lead to its first run (``fe80::1``, ``abcd:ef01::``). A match only has to start
    inside one: ``_check`` matches it again against the whole text."""
    out = []
    n = len(text)
    for m in _CLUSTER.finditer(text):
        s, e = m.span()
        while s and text[s - 1] in _HEX:
            s -= 1
        out.append((max(0, s - _BEFORE), min(n, e + _AFTER)))
    return out


_LOCAL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+-")


def _emails(text: str) -> list[Match]:
    """Addresses around each ``@``: the local part is walked back from it (at most 64
    characters), and the regex tried once, there, not at every position of the text."""
    out: list[Match] = []
    at, end = text.find("@"), 0
    while at >= 0:
        start, low = at, max(end, at - 64)
        while start > low and text[start - 1] in _LOCAL:
            start -= 1
        while start < at and text[start] in "._+-":  # a local part starts with a letter/digit
            start += 1
        m = _EACH["email"].match(text, start) if start < at else None
        if m is not None and _valid("email", m.group()):
            out.append(Match("email", m.start(), m.end(), m.group()))
            end = m.end()
        at = text.find("@", max(at + 1, end))
    return out


def _with_obfuscated(text: str, emails: list[Match]) -> list[Match]:
    """``emails`` and the written-out addresses (``[at]``, ``(dot)``) that none overlaps."""
    more = [
        Match("email", m.start(), m.end(), m.group())
        for m in _OBFUSCATED_EMAIL.finditer(text)
        if not any(e.start < m.end() and m.start() < e.end for e in emails)
    ]
    return sorted(emails + more, key=lambda m: m.start) if more else emails


def find(text: str, allow: Allow = _NO_ALLOW) -> list[Match]:
    """Every personal-data match in ``text``, left to right, none overlapping (an email wins
    over a number inside it)."""
    if not text:
        return []
    emails = _emails(text) if "@" in text else []
    if any(mark in text for mark in _AT_MARKS) and _AT_HINT.search(text):
        emails = _with_obfuscated(text, emails)
    numbers: list[Match] = []
    lower = text.lower()
    numeric = _ANY_NUMERIC if any(w in lower for w in _PHONE_WORDS) else _NO_PHONE_WORD
    taken = iter(emails)
    email = next(taken, None)
    pos = 0
    for ws, we in _windows(text):
        pos = max(pos, ws)  # a window may open inside the previous window's last match
        while pos < we:
            m = numeric.search(text, pos, we)
            if m is None:
                break
            found = _check(m.lastgroup, m.start(), text)
            if found is None:
                pos = m.start() + 1  # a failed candidate: another may still start inside it
                continue
            while email is not None and email.end <= found.start:
                email = next(taken, None)
            if email is not None and email.start < found.end:
                pos = max(found.start + 1, email.end)  # inside an address: part of the email
                continue
            numbers.append(found)
            pos = found.end
    out = sorted(emails + numbers, key=lambda x: x.start) if numbers else emails
    out = _every_occurrence(text, out)
    return [x for x in out if not allow(x)] if allow else out


def _every_occurrence(text: str, found: list[Match]) -> list[Match]:
    """``found`` plus every other occurrence of a value already found in ``text``: a number is
    recognised by its context ("Tel: 01295 271666"), and the same number further on ("call our
    sales team on 01295 271666") is the same personal data, whatever its own context."""
    if not found:
        return found
    taken = [(m.start, m.end) for m in found]
    more = []
    for value, kind in {m.text: m.kind for m in found}.items():
        at = text.find(value)
        while at != -1:
            end = at + len(value)
            bounded = (at == 0 or not text[at - 1].isalnum()) and (
                end == len(text) or not text[end].isalnum()
            )
            if bounded and not any(s < end and at < e for s, e in taken):
                more.append(Match(kind, at, end, value))
                taken.append((at, end))
            at = text.find(value, end)
    return sorted(found + more, key=lambda m: m.start) if more else found


def _check(kind: str, start: int, text: str) -> Match | None:
    """The match of ``kind`` at ``start`` (against the whole text, not the window, so the
    lookaheads see what follows) if it passes its check, else the first later detector's."""
    for other in _NUMERIC[_NUMERIC.index(kind) :]:
        m = _EACH[other].match(text, start)
        found = _iban_of(m.group()) if m and other == "iban" else m and m.group()
        if found and _valid(other, found):
            end = start + len(found)
            if other == "ipv4" and not _ipv4_host(text, start, end):
                continue
            if other == "phone" and not _phone_stands(found, text, start):
                continue
            return Match(other, start, end, found)
    return None


def _phone_stands(number: str, text: str, start: int) -> bool:
    """A number in none of the layouts that stand alone (``_LONE_PHONE``) is a phone only
    after a word that says phone (``Tel.:``, ``call``, ``Mobile:``): bare, ``0171 4869089``
    or ``852 23079338`` could be any reference, and ``012-345-6789`` is no North American
    number."""
    if _LONE_PHONE.fullmatch(number):
        return True
    return _PHONE_WORD.search(text, max(0, start - 40), start) is not None


def _iban_of(candidate: str) -> str | None:
    """The IBAN that ``candidate`` starts with: as many letters and digits as its country's
    length, ending where a group does. The pattern runs on over the next upper-case code
    ("... 0130 00 BIC COBADEFFXXX", "... 7654 32 EUR 500"), which fails the check; cut at the
    registry length, the IBAN itself is tried."""
    want, seen = _IBAN_LENGTHS.get(candidate[:2], 0), 0
    for i, ch in enumerate(candidate):
        seen += ch != " "
        if seen == want:
            cut = candidate[: i + 1]  # the next character: a space or none (a group's end)
            return cut if i + 1 == len(candidate) or candidate[i + 1] == " " else None
    return None


def mask(text: str, allow: Allow = _NO_ALLOW) -> tuple[str, Counter]:
    """``text`` with each match replaced by its placeholder, and the matches counted by type."""
    matches = find(text, allow)
    return replace(text, matches), Counter(m.kind for m in matches)


def replace(text: str, matches: list[Match]) -> str:
    if not matches:
        return text
    parts, last = [], 0
    for m in matches:
        parts += [text[last : m.start], PLACEHOLDERS[m.kind]]
        last = m.end
    parts.append(text[last:])
    return "".join(parts)


def count(text: str, allow: Allow = _NO_ALLOW) -> Counter:
    return Counter(m.kind for m in find(text, allow))


class Tally:
    """Matches per dataset, split and type, records with a match, and records dropped: what
    the validation report, ``metrics.json`` and MLflow show."""

    def __init__(self, mode: str, allow: Allow):
        self.mode, self.allow = mode, allow
        self.found: dict[str, dict[str, Counter]] = {}
        self.records: Counter = Counter()  # (dataset, split) -> records with a match
        self.dropped: Counter = Counter()

    def scan(self, text: str | None) -> list[Match]:
        """The matches in ``text`` that are not allow-listed."""
        return find(text, self.allow) if text else []

    def masked(self, text: str | None, matches: list[Match]) -> str | None:
        """``text`` as the stage writes it under ``mask`` and ``keep``; under ``drop``, as
        ``mask`` would have (the record is dropped): what a derived id is a hash of, so that
        an id never carries what the masking removed (``records.as_written``)."""
        return text if self.mode == "keep" or not matches else replace(text, matches)

    def count(self, dataset: str, split: str, matches: list[Match]) -> bool:
        """Count a record's ``matches`` under its split; True: ``drop`` removes the record."""
        if not matches:
            return False
        self.found.setdefault(dataset, {}).setdefault(split, Counter()).update(
            m.kind for m in matches
        )
        self.records[dataset, split] += 1
        if self.mode == "drop":
            self.dropped[dataset, split] += 1
            return True
        return False

    def merge(self, other: Tally) -> None:
        """Add what ``other`` counted (a worker process's, ``lmforge.data.workers``)."""
        for dataset, splits in other.found.items():
            for split, counts in splits.items():
                self.found.setdefault(dataset, {}).setdefault(split, Counter()).update(counts)
        self.records.update(other.records)
        self.dropped.update(other.dropped)

    def summary(self, datasets: Iterable[str], splits: Iterable[str]) -> dict:
        splits = list(splits)
        out: dict = {"mode": self.mode, "types": list(PII_TYPES), "datasets": {}}
        total: Counter = Counter()
        for name in datasets:
            found = self.found.get(name, {})
            entry = {}
            for split in splits:
                counts = found.get(split, Counter())
                total.update(counts)
                entry[split] = {
                    **{kind: counts.get(kind, 0) for kind in PII_TYPES},
                    "records": self.records[name, split],
                    "dropped": self.dropped[name, split],
                }
            out["datasets"][name] = entry
        out["total"] = {kind: total.get(kind, 0) for kind in PII_TYPES}
        out["total"]["dropped"] = sum(self.dropped.values())
        return out
