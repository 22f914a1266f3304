"""The GPU trainer's plumbing, checked on CPU: each decoder block compiled in place under FSDP2
(a fake process group of two ranks) with no graph break and SDPA left on its causal path (no mask
built); bf16 applied once under FSDP2's mixed-precision policy; rank 0's closing save builds no
second model in memory; collectives wait long enough for it."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch._dynamo.utils import counters

from lmforge.config import load_config
from lmforge.model import build_config, build_model
from lmforge.train import loop, parallel
from lmforge.train.distributed import Runtime
from lmforge.train.precision import DeviceFacts, resolve_precision


@pytest.fixture
def fake_world_of_two():
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    yield Runtime(rank=0, world_size=2, device=torch.device("cpu"))
    dist.destroy_process_group()


def _tiny_model(overrides: list[str]):
    cfg = load_config(None, ["model.preset=cpu-tiny", *overrides])
    return cfg.pretrain, build_model(build_config(cfg.model, vocab_size=256), seed=0)


def test_each_block_is_compiled_in_place_with_no_graph_break_and_no_mask(fake_world_of_two):
    cfg, model = _tiny_model(["pretrain.parallel=fsdp", "pretrain.compile=true"])
    names = set(model.state_dict())
    masks = []
    parallel.decoder_blocks(model)[0].register_forward_pre_hook(
        lambda mod, args, kwargs: masks.append(kwargs.get("attention_mask")), with_kwargs=True
    )
    torch._dynamo.reset()
    counters.clear()
    model = parallel.parallelize(model, cfg, fake_world_of_two)
    ids = torch.randint(0, 256, (2, 32))
    model(input_ids=ids, labels=ids).loss.backward()
    assert counters["stats"]["unique_graphs"] >= 1  # the blocks ran compiled
    assert not counters["graph_break"], dict(counters["graph_break"])
    # The root ran eager, so transformers left the causal mask to SDPA (is_causal=True): a
    # whole-model compile made it build a 4-D mask, which rules out the flash kernel.
    assert masks == [None]
    assert set(model.state_dict()) == names  # no _orig_mod: checkpoints keep their names


@pytest.mark.parametrize(
    ("device", "parallel_kind", "world", "expected"),
    [
        ("cuda", "fsdp", 2, True),  # FSDP2 casts: autocast must stay off
        ("cuda", "ddp", 2, False),
        ("cuda", "fsdp", 1, False),  # one process: no FSDP wrapping, autocast does it
        ("cpu", "fsdp", 2, False),  # CPU: the loop's autocast casts, FSDP2 does not
    ],
)
def test_bf16_is_applied_once(monkeypatch, device, parallel_kind, world, expected):
    facts = DeviceFacts(device_type=device, cuda_capability=(9, 0), cuda_name="NVIDIA H100")
    monkeypatch.setattr(parallel, "resolve", lambda req, dev: resolve_precision(req, facts))
    monkeypatch.setattr(loop, "resolve", lambda req, dev: resolve_precision(req, facts))
    cfg = load_config(None, [f"pretrain.parallel={parallel_kind}", "pretrain.precision=bf16"])
    rt = Runtime(rank=0, world_size=world, device=torch.device(device))
    assert parallel.fsdp_casts_to_bf16(cfg.pretrain, rt) is expected
    with loop.autocast(cfg.pretrain, torch.device("cpu"), rt) as ctx:
        assert ctx.fast_dtype == torch.bfloat16
        assert torch.is_autocast_enabled("cpu") is (not expected)


def test_the_closing_save_builds_no_second_model_and_writes_the_trained_weights(tmp_path):
    from safetensors.torch import load_file

    from lmforge.train import pretrain

    _, trained = _tiny_model([])
    empty = pretrain._empty_model(trained.config)
    assert all(p.is_meta for p in empty.parameters())  # no memory, no random init
    state = trained.state_dict()
    empty.load_state_dict(state, assign=True)
    empty.tie_weights()
    assert empty.lm_head.weight is empty.model.embed_tokens.weight
    empty.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert saved and all(torch.equal(saved[k], state[k]) for k in saved)


def test_collectives_wait_an_hour_for_rank_zeros_closing_work(monkeypatch):
    from datetime import timedelta

    from lmforge.train.distributed import collective_timeout

    assert collective_timeout() == timedelta(hours=1)  # NCCL's own default is 10 minutes
    monkeypatch.setenv("LMFORGE_COLLECTIVE_TIMEOUT_S", "7200")
    assert collective_timeout() == timedelta(hours=2)


def test_adamw_is_fused_on_fsdp2_shards_and_steps_as_foreach_does(fake_world_of_two):
    from torch.distributed.fsdp import fully_shard

    from lmforge.train.optim import build_optimizer

    after = {}
    for kind in ("fused", "foreach"):
        cfg, model = _tiny_model([])
        for block in parallel.decoder_blocks(model):
            fully_shard(block)
        fully_shard(model)
        optimizer = build_optimizer(model, cfg)
        assert optimizer.defaults["fused"] and not optimizer.defaults["foreach"]
        if kind == "foreach":  # the same groups through the multi-tensor path, for reference
            groups = [
                {"params": g["params"], "weight_decay": g["weight_decay"]}
                for g in optimizer.param_groups
            ]
            optimizer = torch.optim.AdamW(
                groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=True
            )
        ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        after[kind] = [p.to_local().clone() for p in model.parameters()]
    pairs = zip(after["fused"], after["foreach"], strict=True)
    assert max((a - b).abs().max().item() for a, b in pairs) < 1e-6


class _Stats:
    """A step's (loss, grad norm) whose reads are recorded: reading the newest step's numbers
    would make the host wait for the device every step."""

    def __init__(self, step: int, loss: float, reads: list[int]):
        self.step, self.loss, self.reads = step, loss, reads

    def tolist(self):
        self.reads.append(self.step)
        return [self.loss, 1.0]


def test_the_divergence_guard_reads_each_step_one_step_late_and_stops_the_update_on_device():
    from lmforge.train.loop import DivergenceGuard

    guard = DivergenceGuard(torch.device("cpu"))
    reads: list[int] = []
    optimizer = type("Opt", (), {})()
    for step, loss in enumerate([2.0, 1.9, float("nan"), 1.8]):
        guard.step(step, torch.tensor([loss, 1.0]), optimizer)
        guard.pending[-1] = (step, _Stats(step, loss, reads))
        found = guard.check(everything=False)
        assert step not in reads  # never the step just queued
        if step == 3:  # step 2 is read now, one step late
            assert found == (2, pytest.approx(float("nan"), nan_ok=True), 1.0)
    assert reads == [0, 1, 2]
    # The sticky flag the fused AdamW skips on: set by step 2, still set after a finite step 3.
    assert optimizer.found_inf.item() == 1.0


def test_a_nan_step_leaves_the_weights_untouched_by_the_fused_update():
    from lmforge.config import TrainConfig
    from lmforge.train.loop import DivergenceGuard
    from lmforge.train.optim import build_optimizer

    model = torch.nn.Linear(4, 1)
    optimizer = build_optimizer(model, TrainConfig(lr=0.1))
    guard = DivergenceGuard(torch.device("cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    for step, loss in enumerate([float("nan"), 1.0]):  # a finite step after it changes nothing
        model(torch.ones(2, 4)).sum().backward()
        guard.step(step, torch.tensor([loss, 1.0]), optimizer)
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
