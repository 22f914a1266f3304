"""A synthetic labelled set of personal data in the layouts real text has, for the masking's
precision and recall (``benchmarks/pii_quality.py``; the layouts are also ``tests/test_pii.py``'s
cases).

Each layout is a template around one value of a type, with the value's exact span known; the
values are generated valid (Luhn for cards, mod-97 check digits for IBANs, real numbering plans
for phones), seeded, so the set is the same on every machine. Lookalikes (dates, versions,
order numbers, ...) hold no personal data: every match in them is a false positive.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    layout: str  # "<type>/<layout>", or "none/<lookalike>"
    text: str
    spans: tuple[tuple[str, int, int], ...]  # (type, start, end) of each value in ``text``


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _luhn_complete(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def card(rng: random.Random, prefix: str, length: int) -> str:
    return _luhn_complete(prefix + _digits(rng, length - len(prefix) - 1))


def iban(rng: random.Random, country: str, bban: str) -> str:
    """``bban``: a pattern of ``9`` (a digit) and ``A`` (a letter); the check digits computed."""
    body = "".join(
        rng.choice(string.digits) if c == "9" else rng.choice(string.ascii_uppercase) for c in bban
    )
    moved = body + country + "00"
    check = 98 - int("".join(str(int(ch, 36)) for ch in moved)) % 97
    return f"{country}{check:02d}{body}"


def grouped(code: str) -> str:
    return " ".join(code[i : i + 4] for i in range(0, len(code), 4))


IBAN_FORMATS = {  # ISO 13616 BBAN shapes (letters where the registry has them)
    "DE": "999999999999999999",
    "GB": "AAAA99999999999999",
    "FR": "99999999999999999999999",
    "NL": "AAAA9999999999",
    "ES": "99999999999999999999",
    "IT": "A9999999999999999999999",
    "CH": "99999999999999999",
    "BE": "999999999999",
}
BICS = ["COBADEFFXXX", "DEUTDEFF", "BNPAFRPPXXX", "ABNANL2A", "NWBKGB2L", "UBSWCHZH80A"]


def _phone(rng: random.Random) -> dict[str, Callable[[], str]]:
    """Six national numbering plans, each in its international and its national layout."""
    d = lambda n: _digits(rng, n)  # noqa: E731
    area = lambda: str(rng.randint(2, 9)) + d(2)  # noqa: E731
    return {
        "us_parens": lambda: f"({area()}) {area()}-{d(4)}",
        "us_dashes": lambda: f"{area()}-{area()}-{d(4)}",
        "us_intl": lambda: f"+1 {area()} {area()} {d(4)}",
        "uk_intl": lambda: f"+44 20 7{d(3)} {d(4)}",
        "uk_national": lambda: f"020 7{d(3)} {d(4)}",
        "uk_mobile": lambda: f"07{rng.randint(400, 999)} {d(6)}",
        "de_intl": lambda: f"+49 30 {d(8)}",
        "de_intl_trunk": lambda: f"+49 (0)89 {d(4)} {d(4)}",
        "de_national": lambda: f"030 {d(3)} {d(5)}",
        "de_mobile": lambda: f"0171 {d(7)}",
        "fr_intl": lambda: f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}",
        "fr_national": lambda: f"01 {d(2)} {d(2)} {d(2)} {d(2)}",
        "fr_dots": lambda: f"06.{d(2)}.{d(2)}.{d(2)}.{d(2)}",
        "in_intl": lambda: f"+91 9{d(4)} {d(5)}",
        "in_national": lambda: f"09{d(3)}-{d(6)}",
        "jp_intl": lambda: f"+81 3-{d(4)}-{d(4)}",
        "jp_national": lambda: f"03-{d(4)}-{d(4)}",
        "jp_mobile": lambda: f"090-{d(4)}-{d(4)}",
        "br_intl": lambda: f"+55 11 9{d(4)}-{d(4)}",
        "br_national": lambda: f"(11) 9{d(4)}-{d(4)}",
    }


NAMES = ["anna.berg", "j.smith", "kai_79", "li.wei", "o.connor", "maria-jose", "tom+news"]
DOMAINS = ["example.com", "mail.example.org", "uni-example.de", "example.co.uk"]


def _email_layouts(rng: random.Random) -> dict[str, Callable[[], tuple[str, str]]]:
    """Each layout: (the template with {} where the value goes, the value)."""

    def addr() -> tuple[str, str]:
        return rng.choice(NAMES), rng.choice(DOMAINS)

    def plain(template: str, at: str = "@", dot: str = ".") -> Callable[[], tuple[str, str]]:
        def make() -> tuple[str, str]:
            name, domain = addr()
            return template, name + at + domain.replace(".", dot)

        return make

    return {
        "sentence": plain("Please write to {} before Friday."),
        "angle_brackets": plain("From: Anna Berg <{}>"),
        "mailto": plain('<a href="mailto:{}">mail us</a>'),
        "parenthesised": plain("the maintainer ({}) said so"),
        "end_of_sentence": plain("Questions go to {}."),
        "obfuscated_brackets": plain("contact {} for details", " [at] ", " [dot] "),
        "obfuscated_parens": plain("mail me: {}", " (at) ", " (dot) "),
        "obfuscated_braces": plain("reach {} anytime", "{at}", "{dot}"),
        "obfuscated_words": plain("write to {} today", " at ", " dot "),
        "obfuscated_caps": plain("email {} please", " AT ", " DOT "),
    }


def _layouts(rng: random.Random) -> dict[str, tuple[str, Callable[[], tuple[str, str]]]]:
    """layout -> (type, a function giving (template, value))."""
    out: dict[str, tuple[str, Callable[[], tuple[str, str]]]] = {}
    for name, make in _email_layouts(rng).items():
        out[f"email/{name}"] = ("email", make)
    templates = [
        "Call {} after 5pm.",
        "Tel.: {}",
        "phone {}, ask for Kai",
        "Mobile: {} (24/7)",
        "Kai Berg, {}, Berlin office",  # no word that says phone
    ]
    for name, number in _phone(rng).items():
        out[f"phone/{name}"] = ("phone", lambda n=number: (rng.choice(templates), n()))
    octet = lambda: str(rng.randint(1, 254))  # noqa: E731
    ip = lambda: f"{rng.choice(['10', '172', '192', '81'])}.{octet()}.{octet()}.{octet()}"  # noqa: E731
    for name, template in {
        "sentence": "Login from {} failed",
        "url": "see http://{}/admin now",
        "port": "connect to {}:8080 then",
        "brackets": "Received: from mx [{}] by",
    }.items():
        out[f"ipv4/{name}"] = ("ipv4", lambda t=template: (t, ip()))
    h = lambda: format(rng.randint(0x1000, 0xFFFF), "x")  # noqa: E731
    ipv6 = {
        "compressed": lambda: ("host {} is up", f"2001:db8:{h()}::{h()}"),
        "full": lambda: ("addr {} ok", ":".join(h() for _ in range(8))),
        "link_local": lambda: ("iface {} up", f"fe80::{h()}:{h()}:{h()}:{h()}"),
        "brackets_port": lambda: ("url http://[{}]:443/", f"2001:db8::{h()}:{h()}"),
    }
    for name, make in ipv6.items():
        out[f"ipv6/{name}"] = ("ipv6", make)
    cards = {
        "visa_spaces": lambda: grouped(card(rng, "4", 16)),
        "mastercard_dashes": lambda: grouped(card(rng, f"5{rng.randint(1, 5)}", 16)).replace(
            " ", "-"
        ),
        "amex_4_6_5": lambda: (lambda c: f"{c[:4]} {c[4:10]} {c[10:]}")(
            card(rng, rng.choice(["34", "37"]), 15)
        ),
        "plain_16": lambda: card(rng, "4", 16),
    }
    for name, value in cards.items():
        out[f"credit_card/{name}"] = (
            "credit_card",
            lambda v=value: (
                rng.choice(["card {} exp 12/27", "Card no.: {}", "paid with {}."]),
                v(),
            ),
        )
    for name, template in {
        "then_bic": "IBAN {} BIC " + "{bic}",
        "then_amount": "{} EUR 500",
        "then_currency_code": "please transfer to {} USD",
        "labelled": "IBAN: {}, ref 2291",
        "end_of_sentence": "Account {}.",
    }.items():
        out[f"iban/{name}"] = ("iban", lambda t=template: _iban_case(rng, t))
    out["iban/ungrouped"] = (
        "iban",
        lambda: ("IBAN {} BIC DEUTDEFF", iban(rng, "DE", IBAN_FORMATS["DE"])),
    )
    return out


def _iban_case(rng: random.Random, template: str) -> tuple[str, str]:
    country = rng.choice(sorted(IBAN_FORMATS))
    return template.replace("{bic}", rng.choice(BICS)), grouped(
        iban(rng, country, IBAN_FORMATS[country])
    )


LOOKALIKES: dict[str, Callable[[random.Random], str]] = {
    "date_iso": lambda r: f"on 20{r.randint(10, 29)}-0{r.randint(1, 9)}-1{r.randint(0, 9)} we met",
    "date_us": lambda r: f"dated 0{r.randint(1, 9)}/1{r.randint(0, 9)}/2002, signed",
    "time": lambda r: f"at 1{r.randint(0, 9)}:3{r.randint(0, 9)}:45 sharp",
    "version": lambda r: (
        f"upgrade to 1.{r.randint(0, 9)}.{r.randint(0, 9)}.{r.randint(0, 9)}.4 now"
    ),
    "price": lambda r: f"only ${r.randint(1, 9)},{r.randint(100, 999)}.99 today",
    "order_number": lambda r: f"order {_digits(r, 12)} shipped",
    "zip_plus_4": lambda r: f"Boston, MA {_digits(r, 5)}-{_digits(r, 4)}",
    "ssn_like": lambda r: f"ref {_digits(r, 3)}-{_digits(r, 2)}-{_digits(r, 4)} filed",
    "isbn": lambda r: f"ISBN 978-3-16-{_digits(r, 6)}-0 in print",
    "mac": lambda r: "MAC " + ":".join(_digits(r, 2) for _ in range(6)),
    "verse": lambda r: f"John {r.randint(1, 21)}:{r.randint(1, 40)} says",
    "score": lambda r: f"won {r.randint(1, 9)}-{r.randint(0, 9)} at home",
    "at_in_prose": lambda r: "we met at noon at the station, dot on time",
    "image_name": lambda r: f"logo@{r.randint(2, 3)}x.png here",
    "coordinates": lambda r: f"at 52.{_digits(r, 4)}, 13.{_digits(r, 4)} north",
    "bic_alone": lambda r: f"BIC {r.choice(BICS)} only",
    "hex_hash": lambda r: "commit " + "".join(r.choice("0123456789abcdef") for _ in range(40)),
}


def cases(per_layout: int = 20, seed: int = 27) -> list[Case]:
    """``per_layout`` cases of every layout and every lookalike."""
    rng = random.Random(seed)
    out: list[Case] = []
    for layout, (kind, make) in _layouts(rng).items():
        for _ in range(per_layout):
            template, value = make()
            start = template.index("{}")
            text = template.replace("{}", value, 1)
            out.append(Case(layout, text, ((kind, start, start + len(value)),)))
    for name, make in LOOKALIKES.items():
        out += [Case(f"none/{name}", make(rng), ()) for _ in range(per_layout)]
    return out
