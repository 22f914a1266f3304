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
    # Issue 27: another upper-case code after the IBAN ran into it and failed the check.
    ("IBAN DE89 3704 0044 0532 0130 00 BIC COBADEFFXXX", "iban", "DE89 3704 0044 0532 0130 00"),
    ("GB82 WEST 1234 5698 7654 32 EUR 500", "iban", "GB82 WEST 1234 5698 7654 32"),
    (
        "FR14 2004 1010 0505 0001 3M02 606 BIC PSSTFRPPXXX",
        "iban",
        "FR14 2004 1010 0505 0001 3M02 606",
    ),
    ("NL91 ABNA 0417 1643 00 ABNANL2A", "iban", "NL91 ABNA 0417 1643 00"),
    ("BE68 5390 0754 7034 EUR 1250", "iban", "BE68 5390 0754 7034"),
    ("NO93 8601 1117 947 NOK 90", "iban", "NO93 8601 1117 947"),
    ("IBAN: CH9300762011623852957 (CHF)", "iban", "CH9300762011623852957"),
    ("CR05 0152 0200 1026 2840 66 USD 10", "iban", "CR05 0152 0200 1026 2840 66"),  # 22 since 2017
    # Addresses written out (docs/benchmarks/pii.md: the synthetic set's layouts).
    (
        "contact anna [at] example [dot] co [dot] uk now",
        "email",
        "anna [at] example [dot] co [dot] uk",
    ),
    ("<kworthington (at) linuxmail {dot} org>", "email", "kworthington (at) linuxmail {dot} org"),
    ("reach li.wei{at}example{dot}com anytime", "email", "li.wei{at}example{dot}com"),
    ("Lee Hosty -x- hostyle AT csn.ul.ie -x-", "email", "hostyle AT csn.ul.ie"),
    (
        "email LI.WEI AT MAIL DOT EXAMPLE DOT ORG please",
        "email",
        "LI.WEI AT MAIL DOT EXAMPLE DOT ORG",
    ),
    ("mail: tom+news[at]uni-example.de.", "email", "tom+news[at]uni-example.de"),
    # Phones in national layouts: France's five pairs anywhere, the rest after a phone word.
    ("Contact : Joseph ; Tél : 02 98 02 03 61 ; E-mail", "phone", "02 98 02 03 61"),
    ("Mobile: 06.81.13.01.39 (24/7)", "phone", "06.81.13.01.39"),
    ("Tel: 01 6188428\nDublin", "phone", "01 6188428"),
    ("Telephone: 01702 530174", "phone", "01702 530174"),
    ("Tel.: 020 7946 0958", "phone", "020 7946 0958"),
    ("Mobile: 07700 900123", "phone", "07700 900123"),
    ("phone 030 310 44457, ask for Kai", "phone", "030 310 44457"),
    ("Handy: 0171 4869089", "phone", "0171 4869089"),
    ("TEL: 03-3518-3299", "phone", "03-3518-3299"),
    ("call 090-1234-5678 after 5pm", "phone", "090-1234-5678"),
    ("Tel.: 09044-991053", "phone", "09044-991053"),
    ("Fax: (04) 747 0943", "phone", "(04) 747 0943"),
    ("ligue (11) 98620-2614 hoje", "phone", "(11) 98620-2614"),
    ("+49 (0)89 1234 5678", "phone", "+49 (0)89 1234 5678"),
    ("+81 3-1234-5678", "phone", "+81 3-1234-5678"),
    ("+91 98765 43210", "phone", "+91 98765 43210"),
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
    "GB82 WEST 1234 5698 7654 33 EUR 500",  # wrong too, however it is cut
    "DE89 3704 0044 0532 0130 0 BIC",  # a digit short of Germany's 22
    "look at this dot com bubble, (at) noon",  # words and brackets, no address
    "ref 0171 4869089 and room 030 310 44457",  # national numbers with no phone word
    "call on 01.12.2002 at 10:30",  # a date after a phone word
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


KNOWN_MISSES = [  # docs/benchmarks/pii.md: left for precision
    "write to maria at example dot com today",  # bare words: "look at this dot com" alike
    "Kai Berg, 0171 1328750, Berlin office",  # a national number with no phone word
]


@pytest.mark.parametrize("text", KNOWN_MISSES)
def test_the_documented_misses_are_still_misses(text):
    assert pii.find(text) == []  # if one is found now, update docs/benchmarks/pii.md


def test_a_placeholder_is_no_phone_word():
    """Masking twice changes nothing: ``<|phone|>`` before a run of numbers (an X11 modeline in
    the shipped set) is not the word that lets a national layout through."""
    masked, _ = pii.mask('Modeline "800x600" 36 800 824 896 1024 600 601 603 625')
    assert masked == 'Modeline "800x600" 36 800 <|phone|> 600 601 603 625'
    assert pii.find(masked) == []


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


# ------------------------------------------------------------------- ids of masked records

SECRET = "10.0.42.7"  # what an attacker wants back from a written id
LOGIN = "Login from {} failed for the admin account."


def _stage(tmp_path, name, docs, as_text: bool, mode: str = "mask"):
    """``docs`` through the validate stage's split (no suites): as plain text (the columnar
    path, ids always derived) or as JSON lines without ids (the record path, data.id_field='');
    the written records."""
    from data_fixtures import MICRO

    from lmforge.data.split import SPLITS
    from lmforge.data.validate import split_and_profile

    root = tmp_path / name
    root.mkdir(parents=True)
    if as_text:
        path = root / "logs.txt"
        path.write_text("\n\n".join(docs) + "\n")
        sets = ["data.corpus_glob=*.txt", "data.text_documents=blank_line"]
    else:
        path = write_jsonl(root / "logs.jsonl", [{"source": "logs", "text": t} for t in docs])
        sets = ["data.id_field="]
    cfg = load_config(None, [*MICRO, f"data.pii={mode}", *sets]).data
    split_and_profile(cfg, "corpus", [path], root / "out", pii.Tally(mode, pii.Allow()))
    return {
        rec["text"]: (rec["id"], split)
        for split in SPLITS
        for line in (root / "out" / f"{split}.jsonl").read_text().splitlines()
        for rec in [json.loads(line)]
    }


@pytest.mark.parametrize("as_text", [True, False], ids=["text-columns", "jsonl-records"])
def test_a_masked_ipv4_cannot_be_brute_forced_from_its_written_id(tmp_path, as_text):
    """Issue 27: ids were an unkeyed hash of the unmasked text, so trying the 65,536 addresses
    of 10.0.0.0/16 gave the masked one back. Now no candidate's id, by the old derivation or by
    the stage's own, singles out the address: every candidate gives the written id."""
    from lmforge.data.records import content_id

    docs = ["A first line of plain words.", LOGIN.format(SECRET), "Another line of words."]
    written = _stage(tmp_path, "run", docs, as_text)
    stored, _ = written[LOGIN.format("<|ipv4|>")]  # the text is masked...
    candidates = [LOGIN.format(f"10.0.{a}.{b}") for a in range(256) for b in range(256)]
    assert [c for c in candidates if content_id(c) == stored] == []  # ...and so is the id

    from lmforge.data.records import as_written

    tally = pii.Tally("mask", pii.Allow())

    def stage_id(text):  # the stage's derivation, as an attacker with the code would run it
        return as_written({"id": None, "text": text}, tally.masked(text, tally.scan(text)))["id"]

    hits = [c for c in candidates if stage_id(c) == stored]
    assert len(hits) == len(candidates)  # the id is the same whatever the address was


@pytest.mark.parametrize("as_text", [True, False], ids=["text-columns", "jsonl-records"])
def test_ids_and_splits_do_not_depend_on_the_masked_value(tmp_path, as_text):
    """The same documents with other addresses, phones and emails in them get the same ids
    and the same splits: what was masked is not in the id, and so not in the split either."""
    docs = [f"Record {i}: {LOGIN.format(f'10.0.{i}.9')} Call 555-201-{i:04d}." for i in range(30)]
    others = [
        f"Record {i}: {LOGIN.format(f'192.168.{i}.1')} Call 555-777-{i:04d}." for i in range(30)
    ]
    assert _stage(tmp_path, "a", docs, as_text) == _stage(tmp_path, "b", others, as_text)


_CLONE_RUN = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from test_pii import _stage
print(json.dumps(_stage(Path(sys.argv[1]), "run", json.loads(sys.argv[3]), sys.argv[4] == "1")))
"""


@pytest.mark.parametrize("as_text", [True, False], ids=["text-columns", "jsonl-records"])
def test_two_clones_give_the_same_ids_and_splits(tmp_path, as_text):
    """Two copies of the same data in other folders, validated by two processes with other
    hash seeds (as two clones of the data version would be), write the same ids to the same
    splits: the ids hold no key, path or process state, only the masked text."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    docs = [f"Doc {i}: mail p{i}@x{i}.example.org, from 10.1.{i}.3, words." for i in range(40)]
    tests = str(Path(__file__).parent)
    runs = []
    for n, seed in (("clone-a", "1"), ("clone-b", "2")):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                _CLONE_RUN,
                str(tmp_path / n),
                tests,
                json.dumps(docs),
                "1" if as_text else "0",
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout.splitlines()[-1]))
    assert runs[0] == runs[1] and len(runs[0]) == len(docs)
    assert len({split for _, split in runs[0].values()}) == 3  # all three splits were drawn
    assert all("@" not in text and "10.1." not in text for text in runs[0])


@pytest.mark.usefixtures("data_store")
def test_texts_that_differ_only_in_masked_data_are_one_document(tmp_path):
    """Two records that differ only in what was masked are the same text as written: one id,
    so the unique-id expectation refuses them as it refuses a repeated document (the shipped
    spam set has one such pair: a spam mailed to two addresses)."""
    raw = make_raw_data(tmp_path / "data")
    labelled = raw / "labelled" / "spam.jsonl"
    recs = [json.loads(line) for line in labelled.read_text().splitlines()]
    for rec, addr in zip(recs[:2], ["a@one.example.org", "b@two.example.org"], strict=True):
        rec["text"] = f"Same offer for {addr}: win now, free gold!"
    write_jsonl(labelled, [{k: v for k, v in r.items() if k != "id"} for r in recs])
    cfg = load_config(None, ["data.labelled_id_field=", "data.validation_share=0.2"])
    with pytest.raises(DataError, match=r"expect_column_values_to_be_unique\(id\) failed for 2"):
        validate(cfg, raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("data_store")
def test_an_input_id_that_holds_personal_data_is_refused_unless_kept(tmp_path):
    """An id the input gives is written as it is, beside the masked text: one that is an
    address would undo the masking, so it is refused, naming the line but not the address."""
    raw = make_raw_data(tmp_path / "data")
    labelled = raw / "labelled" / "spam.jsonl"
    recs = [json.loads(line) for line in labelled.read_text().splitlines()]
    recs[4]["id"] = "carol.smith@example.org"
    write_jsonl(labelled, recs)
    base = ["tokenizer.num_proc=1", "data.validation_share=0.2", "data.test_share=0.2"]
    with pytest.raises(DataError) as err:
        validate(load_config(None, base), raw, tmp_path / "out")
    message = str(err.value)
    assert "spam.jsonl: line 5: field 'id' holds personal data (email)" in message
    assert "data.labelled_id_field: ''" in message and "carol" not in message
    assert not (tmp_path / "out").exists()
    validate(load_config(None, [*base, "data.pii=keep"]), raw, tmp_path / "kept")
    allowed = [*base, "data.pii_allow=[carol.smith@example.org]"]
    validate(load_config(None, allowed), raw, tmp_path / "allowed")


def test_a_wrong_typed_field_is_shown_masked_in_the_error():
    from lmforge.data.records import to_record

    with pytest.raises(DataError) as err:
        to_record({"id": "a", "source": "s", "text": ["mail bob.jones@example.org"]}, "corpus", "f")
    assert "<|email|>" in str(err.value) and "bob.jones" not in str(err.value)


def test_a_value_found_once_is_masked_wherever_it_recurs_in_the_text():
    """The shipped spam 00031 gives its number after "Tel:" and again after "call our sales team
    on": the second had no phone word next to it and reached pretraining unmasked."""
    text = "Tel: 01295 271666 Fax.\nPlease call our sales team on 01295 271666 for other models."
    masked, counts = pii.mask(text)
    assert "271666" not in masked and counts["phone"] == 2
    assert pii.mask("ref 01295 271666 only")[0] == "ref 01295 271666 only"  # no context: kept
    kept = "Tel: 01295 271666; order 01295 2716661"  # a longer number is another value
    assert pii.mask(kept)[0] == "Tel: <|phone|>; order 01295 2716661"
