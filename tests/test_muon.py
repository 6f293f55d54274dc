"""Muon + AdamW: orthogonalization, expert banks per expert, layouts, the optimizer's groups, and
the distributed split (each rank its share of the matrices) against one process."""

import copy
import os
import socket
import threading
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nanochat import muon
from nanochat.common import let_go
from nanochat.gpt import GPT, GPTConfig
from nanochat.muon import MuonAdamW, orthogonalize


def muon_group(params, in_out=False, **kw):
    g = dict(kind="muon", params=params, lr=0.02, momentum=0.95, beta2=0.95, ns_steps=5, weight_decay=0.1,
             in_out=in_out)  # fmt: skip
    g.update(kw)
    return g


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(3, 64, 64), (2, 32, 96), (2, 96, 32), (1, 8, 128)])
def test_orthogonalize_brings_every_singular_value_near_one(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    g[0] *= 100  # scale does not matter
    before = torch.linalg.svdvals(g)
    after = torch.linalg.svdvals(orthogonalize(g).float())  # computed in bf16, as the fork
    # 5 iterations lift every direction above 2% of the largest into [0.5, 1.3] (a square random
    # matrix also has a few far smaller ones; they rise, but less)
    big = before / before[..., :1] > 0.02
    assert after[big].min() > 0.5 and after.max() < 1.3, (after[big].min(), after.max())
    assert (after[~big] > before[~big] / before[..., :1].expand_as(before)[~big]).all()
    # a tall matrix is iterated as its transpose: the same computation; a square one's transpose
    # takes the products in another order, equal up to bf16 rounding
    tol = dict(rtol=0.0, atol=3e-2) if shape[1] == shape[2] else dict(rtol=0.0, atol=0.0)
    torch.testing.assert_close(orthogonalize(g.mT), orthogonalize(g).mT, **tol)


@pytest.mark.slow
def test_expert_bank_is_orthogonalized_per_expert_like_separate_matrices():
    torch.manual_seed(0)
    bank = torch.nn.Parameter(torch.randn(4, 16, 32) * 0.1)
    singles = [torch.nn.Parameter(bank.detach()[e].clone()) for e in range(4)]
    opt_bank = MuonAdamW([muon_group([bank], in_out=True)])
    opt_single = MuonAdamW([muon_group(singles, in_out=True)])
    for step in range(3):
        g = torch.randn(4, 16, 32, generator=torch.Generator().manual_seed(step))
        g[1] *= 1000  # one expert's gradient dwarfs the others: it must not shrink their steps
        bank.grad = g.clone()
        for e, p in enumerate(singles):
            p.grad = g[e].clone()
        opt_bank.step()
        opt_single.step()
    for e in range(4):
        torch.testing.assert_close(bank.detach()[e], singles[e].detach())
    assert (bank.detach()[0] - singles[0].detach()).abs().max() == 0


def test_in_out_layout_gives_the_transposed_update_of_the_linear_layout():
    torch.manual_seed(1)
    w = torch.nn.Parameter(torch.randn(48, 16) * 0.1)  # nn.Linear [out, in]: fan_out 48 > fan_in 16
    wt = torch.nn.Parameter(w.detach().t().clone())  # an expert bank's [in, out]
    a, b = MuonAdamW([muon_group([w])]), MuonAdamW([muon_group([wt], in_out=True)])
    for step in range(3):
        g = torch.randn(48, 16, generator=torch.Generator().manual_seed(10 + step))
        w.grad, wt.grad = g.clone(), g.t().clone()
        a.step()
        b.step()
    torch.testing.assert_close(wt.detach(), w.detach().t())


def test_setup_optimizer_groups_as_the_fork():
    c = GPTConfig(sequence_len=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32, use_moe=True, n_experts=4,
                  expert_hidden_mult=2, moe_freq=2)  # fmt: skip
    m = GPT(c)
    opt = m.setup_optimizer(embedding_lr=0.3, unembedding_lr=0.004, scalar_lr=0.5)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    adamw = [
        m.transformer.wte.weight,
        m.lm_head.weight,
        m.value_embeds["1"].weight,
        m.resid_lambdas,
        m.x0_lambdas,
    ]
    assert all(group_of[id(p)]["kind"] == "adamw" for p in adamw)
    assert sum(g["kind"] == "muon" for g in group_of.values()) == len(list(m.parameters())) - len(adamw)
    scale = (32 / 768) ** -0.5  # the embeddings' and the head's lr follow the width
    assert group_of[id(m.value_embeds["1"].weight)]["lr"] == pytest.approx(0.3 * scale)
    assert group_of[id(m.lm_head.weight)]["lr"] == pytest.approx(0.004 * scale)
    assert group_of[id(m.resid_lambdas)]["lr"] == pytest.approx(0.005)
    assert group_of[id(m.x0_lambdas)]["lr"] == 0.5 and group_of[id(m.x0_lambdas)]["betas"] == (0.96, 0.95)
    assert group_of[id(m.transformer.h[1].attn.ve_gate.weight)]["kind"] == "muon"
    bank_groups = [g for g in opt.param_groups if g["kind"] == "muon" and g["in_out"]]
    assert {p.dim() for g in bank_groups for p in g["params"]} == {3}
    # layer 0: 4 attention matrices + router + 2 banks of 4 experts; layer 1: 4 attention + the
    # value-embedding gate + 2 MLP matrices
    n_params = sum(p.numel() for p in m.parameters())
    n_adamw = sum(p.numel() for p in adamw)
    assert (
        opt.describe()
        == f"Muon (20 matrices, {n_params - n_adamw:,} params) + AdamW (5 tensors, {n_adamw:,} params)"
    )


def test_state_dict_round_trip_continues_identically():
    def make():
        torch.manual_seed(0)
        p, e = torch.nn.Parameter(torch.randn(8, 16)), torch.nn.Parameter(torch.randn(10, 4))
        return [p, e], MuonAdamW([muon_group([p]), dict(kind="adamw", params=[e], lr=0.01, betas=(0.8, 0.95),
                                                        eps=1e-10, weight_decay=0.0)])  # fmt: skip

    def grads(params, step):
        for i, p in enumerate(params):
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(100 * step + i))

    pa, oa = make()
    for s in range(2):
        grads(pa, s)
        oa.step()
    state = copy.deepcopy(oa.state_dict())  # as a checkpoint holds it (state_dict() shares tensors)
    pb, ob = make()
    with torch.no_grad():
        for x, y in zip(pb, pa, strict=True):
            x.copy_(y)
    ob.load_state_dict(state)
    for s in range(2, 4):
        grads(pa, s)
        grads(pb, s)
        oa.step()
        ob.step()
    for x, y in zip(pa, pb, strict=True):
        assert torch.equal(x, y)


@pytest.mark.slow
def test_compiled_step_equals_eager_and_new_hyperparameters_do_not_recompile(monkeypatch):
    """The update math compiled (inductor, as the trainer's), each shape once: the same weights as
    eager over steps whose lr, momentum and weight decay change (0-D tensors, not constants)."""
    import torch._dynamo

    torch._dynamo.reset()
    monkeypatch.setattr(muon, "NS_DTYPE", torch.float32)  # bf16 rounds compiled and eager matmuls apart

    def make(backend):
        torch.manual_seed(0)
        params = [
            torch.nn.Parameter(torch.randn(2, 8, 12) * 0.1),
            torch.nn.Parameter(torch.randn(10, 4) * 0.1),
        ]
        groups = [muon_group(params[:1], in_out=True),  # one graph for Muon (a bank), one for AdamW
                  dict(kind="adamw", params=params[1:], lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)]  # fmt: skip
        return params, MuonAdamW(groups, compile_backend=backend)

    (pe, oe), (pc, oc) = make(None), make("inductor")
    for step in range(4):
        for opt, params in ((oe, pe), (oc, pc)):
            for i, p in enumerate(params):
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(10 * step + i))
            for g in opt.param_groups:
                g["lr"] = 0.02 * (1 - step / 4)
                if g["kind"] == "muon":
                    g["momentum"], g["weight_decay"] = 0.85 + 0.03 * step, 0.2 * (1 - step / 4)
            if step == 1:  # every graph is made in the first step; from here on, none is
                with torch._dynamo.config.patch(error_on_recompile=True):
                    opt.step()
            else:
                opt.step()
    for a, b in zip(pc, pe, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------
# distributed: W ranks, each its share of the matrices, == one process with the averaged gradient


def make_params():
    torch.manual_seed(0)
    return [
        torch.nn.Parameter(torch.randn(3, 8, 16) * 0.1),  # a bank of 3: shares of 2, padded
        torch.nn.Parameter(torch.randn(8, 16) * 0.1),  # same matrix shape: same group
        torch.nn.Parameter(torch.randn(24, 8) * 0.1),  # a group of one matrix (rank 1: padding only)
        torch.nn.Parameter(torch.randn(20, 8) * 0.1),  # AdamW
    ]


def make_opt(params, rank, world, clip):
    return MuonAdamW([muon_group(params[:2], in_out=True), muon_group(params[2:3]),
                      dict(kind="adamw", params=params[3:], lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)],
                     rank=rank, world_size=world, max_grad_norm=clip)  # fmt: skip


def rank_grads(params, rank, step):
    g = torch.Generator().manual_seed(1000 * step + rank)
    return [torch.randn(p.shape, generator=g) * (1 + rank) for p in params]


CLIPS = (0.0, 0.5)  # without and with global-norm clipping (the norm needs every rank's share)


def _worker(rank, world, port, out_dir):
    muon.NS_DTYPE = torch.float32  # bf16 rounding would hide small differences between the paths
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    for clip in CLIPS:
        params = make_params()
        opt = make_opt(params, rank, world, clip)
        for step in range(3):
            for p, g in zip(params, rank_grads(params, rank, step), strict=True):
                p.grad = g
            opt.step()
        torch.save([p.detach() for p in params], os.path.join(out_dir, f"clip{clip}_rank{rank}.pt"))
    dist.destroy_process_group()  # and exit at once: the last step's collectives are let go (let_go)


def test_let_go_waits_for_another_thread_to_drop_its_hold_yielding_the_gil():
    """As a collective's worker thread would: another thread holds a view of the tensor (the view
    keeps it) and drops it after 50 ms, which it can only do holding the GIL."""
    sent = torch.zeros(4)
    view = sent[:2]

    def holder():
        nonlocal view
        time.sleep(0.05)
        view = None

    t = threading.Thread(target=holder)
    t0 = time.monotonic()
    t.start()
    let_go([sent], timeout_s=5.0)
    waited = time.monotonic() - t0
    t.join()
    assert view is None and sent._use_count() == 1
    assert 0.04 < waited < 2.0
    t0 = time.monotonic()
    let_go([sent, torch.ones(3)])  # nobody else holds them: at once
    assert time.monotonic() - t0 < 0.01
    held = sent[1:]
    t0 = time.monotonic()
    let_go([sent], timeout_s=0.1)  # a hold that never ends costs the timeout, not a hang
    assert 0.1 <= time.monotonic() - t0 < 1.0 and held.shape == (3,)


@pytest.mark.slow
def test_distributed_shares_equal_one_process_with_averaged_gradients(tmp_path, monkeypatch):
    monkeypatch.setattr(muon, "NS_DTYPE", torch.float32)  # as the workers: exact comparison
    world = 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(world, port, str(tmp_path)), nprocs=world)
    for clip in CLIPS:
        params = make_params()
        opt = make_opt(params, 0, 1, clip)
        for step in range(3):
            per_rank = [rank_grads(params, r, step) for r in range(world)]
            for i, p in enumerate(params):
                p.grad = sum(g[i] for g in per_rank) / world
            opt.step()
        for r in range(world):
            got = torch.load(tmp_path / f"clip{clip}_rank{r}.pt")
            for a, b in zip(got, params, strict=True):
                torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6, msg=f"clip {clip}, rank {r}")
