"""Personal data: the detectors (what they find, what they must not), masking, and the validate
stage's handling (mask / drop / keep, allow-list, counts, the GX expectation)."""

from __future__ import annotations

import json

import pytest
from data_fixtures import make_raw_data, write_jsonl

from lmforge.config import load_config
from lmforge.data import pii
from lmforge.data.validate import validate
from lmforge.errors import ConfigError, DataError

FOUND = [
    (
        "write to jane.doe+spam@mail.example.co.uk today",
        "email",
        "jane.doe+spam@mail.example.co.uk",
    ),
    ("<JM@NetNoteInc.com>", "email", "JM@NetNoteInc.com"),
    ("call 555-234-5678.", "phone", "555-234-5678"),
    ("%EM%JM@NETNOTEINC.COM%/EM%", "email", "JM@NETNOTEINC.COM"),  # the leak test found it
    ("Links - walter@profits2you.com-----Cash", "email", "walter@profits2you.com"),
    ("Ph.:+353-1-7161987, Web", "phone", "+353-1-7161987"),
    ("Kai 703-724-0118W (work)", "phone", "703-724-0118"),
    ("see http://4.3.2.1/x", "ipv4", "4.3.2.1"),
    ("call (415) 555-2671 now", "phone", "(415) 555-2671"),
    ("toll free 1-800-555-0199!", "phone", "1-800-555-0199"),
    ("office +44 20 7946 0958 (London)", "phone", "+44 20 7946 0958"),
    ("fax 212.555.0147", "phone", "212.555.0147"),
    ("from 192.168.1.20 at noon", "ipv4", "192.168.1.20"),
    ("host 2001:db8:85a3::8a2e:370:7334 up", "ipv6", "2001:db8:85a3::8a2e:370:7334"),
    ("link-local fe80::1ff:fe23:4567:890a.", "ipv6", "fe80::1ff:fe23:4567:890a"),
    (
        "full 2001:0db8:0000:0000:0000:ff00:0042:8329",
        "ipv6",
        "2001:0db8:0000:0000:0000:ff00:0042:8329",
    ),
    ("card 4111 1111 1111 1111 exp", "credit_card", "4111 1111 1111 1111"),
    ("card 5555-5555-5555-4444", "credit_card", "5555-5555-5555-4444"),
    ("amex 378282246310005", "credit_card", "378282246310005"),
    ("IBAN GB82 WEST 1234 5698 7654 32, ref", "iban", "GB82 WEST 1234 5698 7654 32"),
    ("DE89370400440532013000", "iban", "DE89370400440532013000"),
]

NOT_FOUND = [
    "on 2002-08-22 at 12:30:45 the server",  # a date and a time
    "dated 08/22/2002, zip 02134-1234",  # US date, zip+4
    "ssn-like 123-45-6789 and id 1234567890",  # 3-2-4, a bare digit run
    "version 1.2.3.4.5 and 10.0.0.256",  # dotted number longer than an address; octet > 255
    "MAC 00:1a:2b:3c:4d:5e and ratio 3:2",  # six groups of two; prose colons
    "order 4111 1111 1111 1112",  # fails Luhn
    "serial 1234 5678 9012 3452",  # passes Luhn, no issuer range
    "GB82 WEST 1234 5698 7654 33",  # IBAN check digits wrong
    "price $1,234,567.89 or 555 dollars",
    "the logo@2x.png image",  # an image name, not an address
    "room 012-345-6789",  # area code cannot start with 0
    "Genesis 1:1-3 and Psalm 23:4",  # verses
    "(Revelation 3:20:: 20)",  # a verse that parses as IPv6
    "spamassassin MANIFEST,1.100.2.11,1.100.2.12",  # CVS revisions
    "EraseTemp 3.1.0.2",  # a version
]


@pytest.mark.parametrize(("text", "kind", "value"), FOUND)
def test_each_detector_finds_its_type(text, kind, value):
    (match,) = pii.find(text)
    assert (match.kind, match.text) == (kind, value)
    assert text[match.start : match.end] == value


@pytest.mark.parametrize("text", NOT_FOUND)
def test_lookalikes_are_not_personal_data(text):
    assert pii.find(text) == []


def test_luhn_and_a_number_inside_an_address_is_part_of_the_email():
    assert pii.luhn_ok("4111111111111111") and not pii.luhn_ok("4111111111111112")
    text = "mail 555-234-5678@example.com, from 10.1.2.3, call 555-234-5678"
    assert [(m.kind, m.text) for m in pii.find(text)] == [
        ("email", "555-234-5678@example.com"),
        ("ipv4", "10.1.2.3"),
        ("phone", "555-234-5678"),
    ]


def test_mask_replaces_each_match_with_its_typed_placeholder():
    text = "Hi jo@ex.org, call 555-234-5678 or +1 415 555 2671; card 4111111111111111."
    masked, counts = pii.mask(text)
    assert masked == "Hi <|email|>, call <|phone|> or <|phone|>; card <|credit_card|>."
    assert counts == {"email": 1, "phone": 2, "credit_card": 1}
    assert pii.find(masked) == []  # placeholders are not matches themselves
    assert set(pii.PLACEHOLDERS) == set(pii.PII_TYPES)


def test_allow_list_keeps_exact_values_and_whole_domains():
    allow = pii.Allow(["Help@SpamAssassin.org", "@example.com", "192.0.2.1"])
    text = "help@spamassassin.org a@example.com b@sub.example.com c@other.org 192.0.2.1 192.0.2.2"
    masked, counts = pii.mask(text, allow)
    assert masked == (
        "help@spamassassin.org a@example.com b@sub.example.com <|email|> 192.0.2.1 <|ipv4|>"
    )
    assert counts == {"email": 1, "ipv4": 1}


def test_long_texts_and_addresses_at_window_edges():
    filler = "word " * 2000
    text = f"{filler}a.b@c.example.org {filler}2001:db8::dead:beef:cafe:1 {filler}(415) 555-2671"
    assert [m.kind for m in pii.find(text)] == ["email", "ipv6", "phone"]


def test_pii_setting_is_checked():
    with pytest.raises(ConfigError, match=r"data\.pii"):
        load_config(None, ["data.pii=hide"])


# ----------------------------------------------------------------------------- validate stage

EMAILS = [f"person{i}@mail{i}.example.net" for i in range(40)]


def plant(raw, *, with_ip: bool = False):
    """Every other record (of each raw file) carries an address and a phone number."""
    for path in [*raw.glob("corpus/*.jsonl"), raw / "labelled" / "spam.jsonl"]:
        recs = [json.loads(line) for line in path.read_text().splitlines()]
        for i, rec in enumerate(recs):
            if i % 2 == 0:
                rec["text"] += f"\nWrite to {EMAILS[i % len(EMAILS)]} or call 555-201-{i:04d}."
            if with_ip and i == 3:
                rec["text"] += " Sent from 203.0.113.9."
        write_jsonl(path, recs)
    return raw


def written_texts(out):
    return [
        json.loads(line)["text"]
        for path in sorted(out.glob("*/*.jsonl"))
        for line in path.read_text().splitlines()
    ]


@pytest.mark.usefixtures("data_store")
def test_validate_masks_before_the_split_and_counts_per_type_and_split(micro_cfg, tmp_path):
    raw = plant(make_raw_data(tmp_path / "data"), with_ip=True)
    result = validate(micro_cfg, raw, tmp_path / "out")
    out = tmp_path / "out"
    texts = written_texts(out)
    joined = "\n".join(texts)
    assert not any(addr in joined for addr in EMAILS) and "555-201-" not in joined
    assert joined.count("<|email|>") == joined.count("<|phone|>") > 0
    assert all(pii.find(t) == [] for t in texts)

    report = json.loads((out / "report.json").read_text())
    counts = report["pii"]
    assert counts["mode"] == "mask"
    labelled = counts["datasets"]["labelled"]
    assert sum(row["email"] for row in labelled.values()) == 40  # one in each of 80 / 2
    assert set(labelled) == {"train", "validation", "test"}
    for row in labelled.values():  # one email and one phone a planted record (or an address)
        assert row["email"] == row["phone"] == row["records"] - row["ipv4"] > 0
        assert row["dropped"] == 0
    assert counts["total"]["email"] == 40 + 30 + 15 == joined.count("<|email|>")
    assert counts["total"]["ipv4"] == 3  # record 3 of each of the three raw files
    assert result.pii == counts["total"]  # what the CLI prints
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pii"] == counts
    html = (out / "report.html").read_text()
    assert "Personal data" in html and "each match replaced" in html
    # The suite holds the no-personal-data expectation, and it passed.
    (item,) = [
        e
        for e in report["datasets"]["labelled"]["expectations"]
        if e["kwargs"].get("column") == "pii_left"
    ]
    assert item["success"] and item["expectation"] == "expect_column_values_to_be_between"


@pytest.mark.usefixtures("data_store")
def test_drop_removes_records_and_keep_leaves_them_and_says_so(tmp_path):
    raw = plant(make_raw_data(tmp_path / "data"))
    base = ["tokenizer.num_proc=1", "data.validation_share=0.2", "data.test_share=0.2"]
    drop = load_config(None, [*base, "data.pii=drop"])
    validate(drop, raw, tmp_path / "drop")
    report = json.loads((tmp_path / "drop" / "report.json").read_text())
    for name, n_in, n_dropped in (("corpus", 90, 45), ("labelled", 80, 40)):
        rows = report["pii"]["datasets"][name].values()
        assert sum(row["dropped"] for row in rows) == n_dropped
        assert sum(report["splits"][name].values()) == n_in - n_dropped
    assert not any(addr in t for t in written_texts(tmp_path / "drop") for addr in EMAILS)

    keep = load_config(None, [*base, "data.pii=keep"])
    validate(keep, raw, tmp_path / "keep")
    joined = "\n".join(written_texts(tmp_path / "keep"))
    assert EMAILS[0] in joined and "<|email|>" not in joined
    report = json.loads((tmp_path / "keep" / "report.json").read_text())
    assert report["pii"]["mode"] == "keep" and report["pii"]["total"]["email"] > 0
    assert "data.pii: keep" in (tmp_path / "keep" / "report.html").read_text()
    columns = {
        e["kwargs"].get("column") for ds in report["datasets"].values() for e in ds["expectations"]
    }
    assert "pii_left" not in columns


@pytest.mark.usefixtures("data_store")
def test_an_unmasked_match_in_the_written_text_fails_the_expectation(
    micro_cfg, tmp_path, monkeypatch
):
    raw = plant(make_raw_data(tmp_path / "data"))
    monkeypatch.setattr(pii, "replace", lambda text, matches: text)  # a masking bug
    with pytest.raises(DataError) as err:
        validate(micro_cfg, raw, tmp_path / "out")
    assert "pii_left" in str(err.value) and "nothing was written downstream" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_augmentation_keeps_placeholders_whole():
    import random

    from lmforge.data.augment import augment_text, char_noise

    text = "Mail <|email|> or <|phone|>, from <|ipv4|>. " * 20
    noisy = char_noise(text, 1.0, random.Random(0))  # every letter outside them replaced
    assert noisy.count("<|email|>") == noisy.count("<|phone|>") == noisy.count("<|ipv4|>") == 20
    cfg = load_config(None, ["augment.p_char_noise=0.5", "augment.p_sentence_shuffle=1.0"])
    copy, ops = augment_text(text, cfg.augment, random.Random(1))
    assert "char_noise" in ops and "sentence_shuffle" in ops
    leftovers = copy
    for placeholder in pii.PLACEHOLDERS.values():
        leftovers = leftovers.replace(placeholder, "")
    assert "<|" not in leftovers and "|>" not in leftovers  # none broken
