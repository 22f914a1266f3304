"""Config of the data stages: validate (``data``), augment (``augment``), tokenize
(``tokenizer``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lmforge.config.schema import Section, setting


def check_split_shares(section: Section) -> None:
    """A split by hash needs a training share left: validation_share + test_share < 1."""
    if section.validation_share + section.test_share >= 1:
        section.fail(
            "test_share",
            f"validation_share {section.validation_share} + test_share {section.test_share} "
            "must leave a training split (sum < 1)",
        )


# min_class_share's default, as a share of an even split: 0.6 / 2 == 0.3 exactly, the old default.
EVEN_SPLIT_SHARE = 0.6

# Input formats (lmforge.data.sources): auto detects one from the path.
Format = Literal["auto", "jsonl", "json", "text", "parquet", "csv", "arrow"]


@dataclass
class DataConfig(Section):
    """Raw data layout (under the DVC-tracked ``data/``), validation bounds and the split."""

    name = "data"

    corpus_glob: str = setting(
        "corpus/*.jsonl",
        "Pretraining text under data/: files (or save_to_disk folders) in any of the formats "
        "of data.corpus_format; the default JSON lines are {id, source, genre, text}.",
    )
    labelled_file: str = setting(
        "labelled/spam.jsonl",
        "Downstream labelled set under data/: JSON lines {id, text, label}, CSV, Parquet, ...; "
        "the fields are data.labelled_text_field, labelled_id_field and label_field.",
    )
    labels: list[str] = setting(
        ["ham", "spam"],
        "The classes of the labelled set, in id order; empty: the sorted labels of the training "
        "split (validate records them in labelled/labels.json, which later stages read).",
    )
    corpus_format: Format = setting(
        "auto",
        "How the corpus files are read: auto (from the extension: .jsonl/.ndjson, .json, "
        ".txt/.text/.md, .parquet, .csv/.tsv; a folder is one written by Dataset.save_to_disk), "
        "or jsonl, json, text, parquet, csv, arrow.",
    )
    labelled_format: Format = setting(
        "auto", "How data.labelled_file is read (the formats of data.corpus_format)."
    )
    text_documents: Literal["file", "blank_line"] = setting(
        "file",
        "Plain-text corpus files: file: each file is one document; blank_line: documents are "
        "separated by blank lines.",
    )
    num_proc: int = setting(
        0,
        "Worker processes that validate a plain-text corpus, a batch of 10,000 documents each "
        "(the output is the same for any number); 0: one per usable core; 1: none, all in the "
        "stage's process. Workers start only once the corpus is more than one batch.",
        ge=0,
    )
    text_field: str = setting("text", "The field (column) that holds a record's text.")
    id_field: str = setting(
        "id",
        "The field that holds a record's unique id; empty: a hash of the text as written, after "
        "masking (so an id reveals nothing the masking removed; a repeated text gets one id).",
    )
    source_field: str = setting(
        "source", "The corpus field that names a record's source; empty: the file's stem."
    )
    labelled_text_field: str = setting("text", "The labelled set's text field.")
    labelled_id_field: str = setting(
        "id", "The labelled set's id field; empty: a hash of the text (as data.id_field)."
    )
    label_field: str = setting(
        "label", "The labelled set's label field (integer labels are read as their strings)."
    )
    min_chars: int = setting(1, "Shortest record text accepted, in characters.", ge=1)
    max_chars: int = setting(200_000, "Longest record text accepted, in characters.", ge=1)
    min_alpha_share: float = setting(
        0.5, "Least share of letters among a record's non-space characters.", ge=0, le=1
    )
    labelled_alpha_mostly: float = setting(
        0.99,
        "Share of the labelled records that must reach min_alpha_share (Great Expectations' "
        "`mostly`); a real task's short texts are sometimes mostly numbers ('Cross assembler "
        "for 6800/6801/6803/6805/6809/Z80') and are kept as written; 1: every record. The "
        "corpus is held to min_alpha_share in full.",
        ge=0,
        le=1,
    )
    max_duplicate_share: float = setting(
        0.05, "Most share of records whose text repeats another's.", ge=0, le=1
    )
    min_class_share: float | None = setting(
        None,
        "Least share of the labelled set each label must have; null: 60% of an even split "
        "(0.6 / the number of labels: 0.3 for two classes, 0.1 for six), so a task with more "
        "classes needs no tuning here.",
        ge=0,
        le=1,
    )
    max_file_mb: float = setting(100.0, "Larger raw files are refused before reading.", gt=0)
    max_line_mb: float = setting(
        4.0, "One record a line: a longer line is refused while reading.", gt=0
    )
    split_salt: str = setting(
        "lmforge-v1", "Salt of the hash of the record id that assigns each record its split."
    )
    validation_share: float = setting(
        0.05, "Share of records (by id hash) in the validation split.", gt=0, lt=1
    )
    test_share: float = setting(
        0.05, "Share of records (by id hash) in the test split.", gt=0, lt=1
    )
    failed_examples: int = setting(3, "Offending records quoted per failed expectation.", ge=0)
    pii: Literal["mask", "drop", "keep"] = setting(
        "mask",
        "Personal data in any text (emails, phone numbers, IPv4/IPv6 addresses, Luhn-valid card "
        "numbers, IBANs), before the split: mask replaces each match by a typed placeholder "
        "(<|email|>, <|phone|>, ...), drop removes the record, keep leaves it (and the report "
        "says so).",
    )
    curate_normalise: bool = setting(
        True,
        "Curation (corpus): before the checks, remove escape sequences, resolve backspace "
        "overstrikes (as col -b), make form feeds line ends, remove the other control "
        "characters (tab and line end kept), Unicode NFC, strip trailing whitespace; a text "
        "left empty is removed. Counted in report.json.",
    )
    curate_split_long: bool = setting(
        True,
        "Curation (corpus): a document longer than data.max_chars is split at blank lines (then "
        "line ends, then spaces) into pieces under it, each its own record, instead of refused.",
    )
    curate_exact_dedup: bool = setting(
        True,
        "Curation (corpus): of documents with the same text as written (masked), keep the first "
        "in input order.",
    )
    curate_near_dedup: bool = setting(
        True,
        "Curation (corpus): of near duplicates (MinHash LSH over word n-grams, datasketch), keep "
        "the first in input order.",
    )
    near_dedup_threshold: float = setting(
        0.85,
        "Estimated Jaccard similarity of two documents' word n-grams from which the later is a "
        "near duplicate (conservative; FineWeb uses ~0.75).",
        ge=0.5,
        le=1,
    )
    near_dedup_ngram: int = setting(
        5, "Words per n-gram of near-duplicate detection (FineWeb: 5).", ge=1, le=32
    )
    near_dedup_permutations: int = setting(
        128,
        "MinHash permutations: precision of the similarity estimate; memory 4 bytes each a kept "
        "document.",
        ge=16,
        le=1024,
    )
    curate_examples: int = setting(
        5, "Examples (with file and line) of each curation rule in report.json.", ge=0, le=100
    )
    curate_quality: bool = setting(
        True,
        "Curation (corpus): remove documents past the data.quality_* thresholds (heuristics of "
        "the Gopher, C4 and FineWeb recipes, lmforge.data.quality), each counted in report.json.",
    )
    quality_min_words: int = setting(
        5, "Fewest words (runs of non-space) a document may have (Gopher: 50).", ge=0
    )
    quality_max_words: int = setting(
        100_000, "Most words a document may have (Gopher: 100,000).", ge=1
    )
    quality_min_mean_word_length: float = setting(
        3.0, "Least mean characters a word (Gopher: 3).", ge=0
    )
    quality_max_mean_word_length: float = setting(
        10.0, "Most mean characters a word (Gopher: 10).", gt=0
    )
    quality_max_symbol_ratio: float = setting(
        0.1, "Most '#' and ellipses ('...', '…') a word (Gopher: 0.1).", ge=0
    )
    quality_min_punctuated_lines: float = setting(
        0.01,
        "Least share of lines ending in terminal punctuation (. ! ? quotes …), documents of 5 "
        "lines or more (FineWeb: 0.12; C4 drops each such line). 0.01 removes a document none "
        "of whose lines ends a sentence.",
        ge=0,
        le=1,
    )
    quality_max_duplicate_lines: float = setting(
        0.5,
        "Most share of lines repeating an earlier line of the document (Gopher: 0.3, which "
        "removes 39 scenes of the shipped Shakespeare: speaker names repeat).",
        ge=0,
        le=1,
    )
    quality_max_top_2gram: float = setting(
        0.25,
        "Most share of a document's characters in its most frequent repeated word 2-gram, "
        "case ignored (Gopher: 0.2, which removes KJV's Ezra 2: 'the children of ...').",
        ge=0,
        le=1,
    )
    quality_max_duplicate_5grams: float = setting(
        0.7,
        "Most share of a document's characters in words of word 5-grams occurring more than "
        "once in it (Gopher: 0.15, counting repeats after the first; 0.3 here removes 19 "
        "chapters of the shipped KJV: its lists and rituals repeat).",
        ge=0,
        le=1,
    )
    languages: list[str] = setting(
        [],
        "Curation (corpus): the languages kept (ISO 639-1 codes, py3langid's 97, e.g. [en]); a "
        "document identified as another with at least data.language_min_probability is "
        "removed. Empty: every language kept (no identification).",
    )
    language_min_probability: float = setting(
        0.5,
        "A document is removed for its language only when identified with at least this "
        "probability (uncertain ones, often short or mixed, are kept).",
        ge=0,
        le=1,
    )
    curate_decontaminate: bool = setting(
        True,
        "Curation (corpus): remove documents sharing a word data.decontaminate_ngram-gram with "
        "an evaluation text (labelled validation/test texts, finetune.sft_data's "
        "validation/test pairs), so no evaluation measures memorised text.",
    )
    decontaminate_ngram: int = setting(
        13, "Words per n-gram of decontamination (GPT-3: 13).", ge=5, le=64
    )
    pii_allow: list[str] = setting(
        [],
        "Matches never masked (known public addresses): exact values, case-insensitive, or "
        "@domain for every address of a domain and its subdomains.",
    )

    def check(self) -> None:
        check_split_shares(self)
        if self.quality_min_words > self.quality_max_words:
            self.fail(
                "quality_min_words",
                f"{self.quality_min_words} exceeds data.quality_max_words {self.quality_max_words}",
            )
        if self.quality_min_mean_word_length > self.quality_max_mean_word_length:
            self.fail(
                "quality_min_mean_word_length",
                f"{self.quality_min_mean_word_length} exceeds "
                f"data.quality_max_mean_word_length {self.quality_max_mean_word_length}",
            )
        for code in self.languages:
            if not (isinstance(code, str) and code.isalpha() and code.islower() and len(code) <= 3):
                self.fail("languages", f"{code!r}: list ISO 639-1 codes such as en, de, fr")
        if self.min_chars > self.max_chars:
            self.fail("min_chars", f"{self.min_chars} exceeds data.max_chars {self.max_chars}")
        # Empty labels are taken from the training split: validate checks these rules then.
        if self.labels and (len(self.labels) < 2 or len(set(self.labels)) != len(self.labels)):
            self.fail("labels", f"{self.labels!r}: list at least two distinct labels (or none)")
        if self.labels and self.class_share_floor(len(self.labels)) * len(self.labels) > 1:
            self.fail(
                "min_class_share",
                f"{self.class_share_floor(len(self.labels))} for {len(self.labels)} labels cannot "
                "all hold "
                f"(at most {1 / len(self.labels):.3g})",
            )

    def class_share_floor(self, n_labels: int) -> float:
        """The least share each of ``n_labels`` classes must have (``min_class_share``)."""
        if self.min_class_share is not None:
            return self.min_class_share
        return EVEN_SPLIT_SHARE / n_labels


@dataclass
class AugmentConfig(Section):
    """Seeded text augmentation of the training split only (EDA-style operations)."""

    name = "augment"

    seed: int = setting(1234, "Seed of the augmentation; the same seed gives the same copies.")
    share: float = setting(
        0.3, "Fraction of training records that get one augmented copy.", ge=0, le=1
    )
    p_random_deletion: float = setting(0.1, "Probability a word is deleted.", ge=0, le=1)
    p_random_swap: float = setting(0.1, "Share of words swapped with another.", ge=0, le=1)
    p_random_insertion: float = setting(
        0.1, "Share of words inserted (copies of the record's own words).", ge=0, le=1
    )
    p_char_noise: float = setting(0.02, "Probability a letter is replaced (typo).", ge=0, le=1)
    p_sentence_shuffle: float = setting(
        0.2, "Probability a record's sentences are shuffled.", ge=0, le=1
    )
    augment_labelled: bool = setting(True, "Augment the labelled training split too.")


@dataclass
class TokenizerConfig(Section):
    """Byte-level BPE trained on the training split; packing into fixed-length blocks."""

    name = "tokenizer"

    vocab_size: int = setting(4096, "BPE vocabulary size, special tokens included.", ge=300)
    min_frequency: int = setting(2, "A merge must occur at least this often.", ge=1)
    special_tokens: list[str] = setting(
        ["<|endoftext|>", "<|pad|>", "<|unk|>"], "Tokens never split; must hold eos and pad."
    )
    eos_token: str = setting("<|endoftext|>", "Appended to every document: the end of a text.")
    pad_token: str = setting("<|pad|>", "Pads classifier batches (never a training target).")
    block_size: int = setting(
        256, "Tokens per packed block: the model's context length in pretraining.", ge=2
    )
    num_proc: int = setting(2, "datasets.map worker processes for encoding.", ge=1)
    batch_size: int = setting(1000, "Records per datasets.map batch.", ge=1)
    train_max_mb: float = setting(
        8.0,
        "BPE merges settle long before the whole corpus is seen: train on a hash-sampled ~this "
        "many MB of the training split (0: all of it), so the stage scales with encoding.",
        ge=0,
    )
    include_labelled_text: bool = setting(
        True,
        "The labelled records' texts (labels dropped) join the LM text of their own split: "
        "domain-adaptive pretraining. Only the train split is trained on.",
    )

    def check(self) -> None:
        for key in ("eos_token", "pad_token"):
            if getattr(self, key) not in self.special_tokens:
                self.fail(key, f"{getattr(self, key)!r} must be listed in tokenizer.special_tokens")
        if self.eos_token == self.pad_token:
            self.fail("pad_token", "must differ from tokenizer.eos_token")
