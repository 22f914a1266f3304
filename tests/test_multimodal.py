"""The image-text model: built from transformers' classes around a decoder, trained in two stages
through the one loop, saved as a standard folder, evaluated against the text-only baseline.

Everything is tiny and made here (a random Llama decoder, 32 px shapes): nothing downloaded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hf_fixtures import make_hf_model
from multimodal_fixtures import make_paligemma, write_image_set

from lmforge.config import load_config
from lmforge.errors import ConfigError, TrainingError

FAST = [  # a few fp32 steps on one thread: the shared 2-core machine
    f"multimodal.{stage}.{key}"
    for stage in ("align", "instruct")
    for key in ("precision=fp32", "num_threads=1", "device=cpu", "micro_batch_size=4",
                "warmup_steps=0", "eval_every=3", "eval_batches=1", "log_every=1")
]  # fmt: skip


@pytest.fixture(scope="module")
def mm(tmp_path_factory, blank_store_db):
    root = tmp_path_factory.mktemp("mm")
    shutil.copyfile(blank_store_db, root / "mlflow.db")  # a real store, embedded
    decoder = make_hf_model(root / "decoder", "llama")
    data = write_image_set(root / "images")
    overrides = [
        *FAST,
        f"multimodal.decoder={decoder}",
        "multimodal.align.max_steps=3",
        "multimodal.instruct.max_steps=3",
        "multimodal.instruct.method=lora",
        "multimodal.instruct.questions_per_image=2",
        "multimodal.eval.retrieval_pool=5",
        "multimodal.eval.max_new_tokens=4",
        f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
        f"tracking.artifact_location={root / 'mlartifacts'}",
    ]
    cfg = load_config(None, overrides)
    from lmforge.multimodal.train import align, instruct

    aligned = align(cfg, None, data, root / "align")
    instructed = instruct(cfg, root / "align", data, root / "instruct")
    return {"root": root, "cfg": cfg, "decoder": decoder, "data": data, "align": aligned,
            "instruct": instructed, "overrides": overrides}  # fmt: skip


def _load(folder: Path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    local = {"local_files_only": True, "trust_remote_code": False}
    return (
        AutoModelForImageTextToText.from_pretrained(folder, **local),
        AutoProcessor.from_pretrained(folder, **local),
    )


def test_align_trains_vision_and_projector_only_and_saves_a_standard_model(mm):
    from transformers import AutoModelForCausalLM, LlavaForConditionalGeneration

    result, folder = mm["align"], mm["root"] / "align" / "model"
    assert result.trainable_params == result.vision_params + result.projector_params
    model, processor = _load(folder)
    assert isinstance(model, LlavaForConditionalGeneration)
    decoder = AutoModelForCausalLM.from_pretrained(mm["decoder"])
    # The decoder is frozen: its weights are the pretrained ones, bit for bit.
    for name, value in decoder.model.state_dict().items():
        if "embed_tokens" not in name:  # that one grew a row for the image token
            assert torch.equal(model.model.language_model.state_dict()[name], value), name
    metrics = json.loads((mm["root"] / "align" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["val_loss"] > 0
    # 32 px with 8 px patches: 16 image tokens in front of the prompt.
    from lmforge.data.images.pairs import load_image, read_pairs

    pair = read_pairs(mm["data"] / "test")[0]
    inputs = processor(
        images=[load_image(pair.image_path)], text=["<image>hi"], return_tensors="pt"
    )
    assert int((inputs["input_ids"] == model.config.image_token_index).sum()) == 16
    assert (mm["root"] / "align" / "checkpoints" / "model").is_dir()


def test_instruct_lora_is_merged_and_trained_on_pairs_made_from_captions(mm):
    result, out = mm["instruct"], mm["root"] / "instruct"
    assert result.method == "lora" and result.trainable_params < result.decoder_params
    rows = [json.loads(line) for line in (out / "pairs" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 27 and {r["answer"] for r in rows[1::2]} == {"yes"}
    files = {p.name for p in (out / "model").iterdir()}
    assert "adapter_config.json" not in files and "model.safetensors" in files  # merged
    _load(out / "model")


def test_evaluate_writes_the_report_against_text_only_and_chance(mm, tmp_path):
    from lmforge.multimodal.evaluate import evaluate_multimodal

    report = evaluate_multimodal(
        mm["cfg"], mm["root"] / "instruct" / "model", mm["data"] / "test", tmp_path / "eval"
    )
    assert set(report) >= {"model", "text_only", "chance", "gate"}
    assert report["chance"]["recall_at_1"] == pytest.approx(1 / 5)
    # Without the image every test image gets the same caption.
    captions = [
        json.loads(x) for x in (tmp_path / "eval" / "captions.jsonl").read_text().split("\n") if x
    ]
    assert len({c["text_only"] for c in captions}) == 1 and len(captions) == 9
    assert "data:image/png;base64," in (tmp_path / "eval" / "report.html").read_text()


def test_any_local_vision_language_folder_is_a_base(mm):
    """PaliGemma (SigLIP + Gemma, prefix attention over the prompt) through the same stages."""
    from lmforge.multimodal.evaluate import Scorer
    from lmforge.multimodal.model import load_vlm
    from lmforge.multimodal.train import align

    base = make_paligemma(mm["root"] / "paligemma", mm["decoder"])
    steps = ["multimodal.align.max_steps=2", "multimodal.align.eval_every=2"]
    cfg = load_config(None, [*mm["overrides"], f"multimodal.base_model={base}", *steps])
    result = align(cfg, None, mm["data"], mm["root"] / "pali-align")
    assert result.architecture == "PaliGemmaForConditionalGeneration"
    assert result.trainable_params == result.vision_params + result.projector_params
    model, processor = load_vlm(mm["root"] / "pali-align" / "model")
    scorer = Scorer(model.eval(), processor, "Describe the picture.", 8)
    test = sorted((mm["data"] / "test" / "images").iterdir())[:2]
    assert len(scorer.generate(test, 3)) == 2
    with_image = scorer.caption_nll(test, ["a red square"] * 2)
    without = scorer.caption_nll(test, ["a red square"] * 2, with_image=False)
    assert with_image[0] != with_image[1] and without[0] == pytest.approx(without[1])


def test_generate_answers_about_an_image_from_the_command_line(mm, tmp_path, capsys):
    from lmforge.cli import main

    model = str(mm["root"] / "instruct" / "model")
    picture = sorted((mm["data"] / "test" / "images").iterdir())[0]
    ask = ["generate", "--model", model, "--temperature", "0", "--max-new-tokens", "3"]
    proc = subprocess.run(
        [sys.executable, "-m", "lmforge.cli", *ask, "--image", str(picture), "What is this?"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip("\n").splitlines()) == 1  # one answer for the one prompt
    broken = tmp_path / "broken.png"
    broken.write_text("not a picture")
    with pytest.raises(SystemExit) as exit_:
        main([*ask, "--image", str(broken), "What is this?"])
    err = capsys.readouterr().err
    assert exit_.value.code != 0 and "Traceback" not in err
    assert f"--image {broken}: not a picture Pillow can decode" in " ".join(err.split())


def test_registered_only_past_the_gate_and_loaded_back_without_code(mm, tmp_path):
    from lmforge.errors import RegistryError
    from lmforge.multimodal.evaluate import evaluate_multimodal
    from lmforge.multimodal.register import load_registered, register_multimodal

    model = mm["root"] / "instruct" / "model"
    cfg = load_config(None, [*mm["overrides"], "multimodal.eval.min_recall_gain=-1"])
    evaluate_multimodal(cfg, model, mm["data"] / "test", tmp_path / "passed")
    failed = tmp_path / "failed"
    failed.mkdir()
    report = json.loads((tmp_path / "passed" / "report.json").read_text())
    report["gate"]["passed"] = False
    (failed / "report.json").write_text(json.dumps(report))
    with pytest.raises(RegistryError, match="the gate failed"):
        register_multimodal(cfg, model, failed, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    result = register_multimodal(cfg, model, tmp_path / "passed", tmp_path / "registered")
    assert result["task"] == "image-text-to-text" and result["alias"] == "challenger"
    loaded, processor = load_registered(cfg, result["name"], result["version"])
    assert type(loaded).__name__ == "LlavaForConditionalGeneration"
    assert processor.image_token == "<image>"
    # generate --image reads the registry too: the alias pinned to its version, checked first.
    from lmforge.multimodal.generate import answer
    from lmforge.serve.generate import Sampling

    picture = sorted((mm["data"] / "test" / "images").iterdir())[0]
    uri = f"models:/{result['name']}@challenger"
    (reply,) = answer(cfg, uri, picture, ["What is this?"], Sampling(2, temperature=0))
    assert reply.new_tokens <= 2


def test_caption_metrics_against_hand_computed_values():
    from lmforge.multimodal.caption_metrics import cider_d, recall_at, rouge_l

    # LCS("a red square", "the red square here") = 2: P 2/3, R 2/4, F 4/7.
    assert rouge_l("a red square", ["the red square here"]) == pytest.approx(4 / 7)
    assert rouge_l("A Red, square!", ["a red square"]) == 1.0
    # Two images: identical candidate and reference score 10 x (share of n-gram orders that
    # exist); unigram "b" is in both references (idf 0), so the second scores on what is left.
    refs = [["a b"], ["c b"]]
    assert cider_d(["a b", "x y"], refs) == pytest.approx([10 * 2 / 4, 0.0])
    assert recall_at([0, 3, 1], 1) == pytest.approx(1 / 3)
    assert recall_at([0, 3, 1], 5) == 1.0


def test_bad_model_folders_and_presets_are_one_clear_error(mm):
    from lmforge.multimodal.model import load_vlm

    decoder = mm["decoder"]  # a causal LM, not a vision-language model
    with pytest.raises(
        TrainingError, match=r"not an image-text-to-text model.*multimodal\.decoder"
    ):
        load_vlm(decoder)
    with pytest.raises(ConfigError, match=r"multimodal\.vision_preset: unknown preset 'huge'"):
        load_config(None, ["multimodal.vision_preset=huge"])
