"""MoE block: dispatch correctness, drop order, balance loss, compile without recompiles."""

import math

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing

from nanochat import moe as moe_lib
from nanochat.moe import MoE, balance_loss, expert_capacity

D, E, K, HMULT = 32, 4, 2, 2


def make_moe(cf: float, seed: int = 0, coeff: float = 0.01, order: str = "token") -> MoE:
    torch.manual_seed(seed)
    m = MoE(D, E, K, HMULT, capacity_factor=cf, balance_coeff=coeff, drop_order=order)
    with torch.no_grad():
        m.router.weight.normal_(0, 0.5)
        m.experts.w_fc.normal_(0, D**-0.5)
        m.experts.w_proj.normal_(0, (HMULT * D) ** -0.5)
    return m


def clone_with_cf(m: MoE, cf: float) -> MoE:
    other = MoE(D, E, K, HMULT, capacity_factor=cf, balance_coeff=m.balance_coeff, drop_order=m.drop_order)
    other.load_state_dict(m.state_dict())
    return other


def tiny_moe_gpt(capacity_factor: float, sequence_len: int = 32, window_pattern: str = "SSSL"):
    """A 2-layer GPT whose every MLP is a 4-expert top-2 MoE, weights initialised (seed as set)."""
    from nanochat.gpt import GPT, GPTConfig

    cfg = GPTConfig(
        sequence_len=sequence_len,
        vocab_size=64,
        n_layer=2,
        n_head=2,
        n_embd=32,
        use_moe=True,
        n_experts=4,
        expert_topk=2,
        expert_hidden_mult=2,
        moe_capacity_factor=capacity_factor,
        window_pattern=window_pattern,
    )
    model = GPT(cfg)
    model.init_weights()
    return model


def fwd_bwd(m: MoE, x: torch.Tensor):
    x = x.clone().requires_grad_(True)
    y, aux = m(x)
    g = torch.linspace(-1, 1, y.numel()).view_as(y)
    ((y * g).sum() + aux["aux_loss"]).backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    return y.detach(), x.grad.clone(), grads, aux


def reference(m: MoE, x: torch.Tensor, cap: int | None, order: str = "token"):
    """Python loop over assignments in the drop order: token order, each token's choices together
    ("token"), or all first choices, then all second choices ("choice")."""
    xf = x.reshape(-1, D)
    probs = torch.softmax(xf @ m.router.weight.t(), dim=-1)
    gates, choice = probs.topk(K, dim=-1)
    gates = gates / gates.sum(-1, keepdim=True)
    y = torch.zeros_like(xf)
    fill = [0] * E
    kept = torch.zeros(xf.shape[0], K, dtype=torch.bool)
    n_tok = xf.shape[0]
    pairs = [(t, j) for t in range(n_tok) for j in range(K)]
    if order == "choice":
        pairs = [(t, j) for j in range(K) for t in range(n_tok)]
    for t, j in pairs:
        e = int(choice[t, j])
        if cap is not None and fill[e] >= cap:
            continue
        fill[e] += 1
        kept[t, j] = True
        h = torch.relu(xf[t] @ m.experts.w_fc[e]).square()
        y[t] += gates[t, j] * (h @ m.experts.w_proj[e])
    return y.view_as(x), kept, choice


def test_capacity_formula():
    # C = ceil(cf * T * k / E), rounded up to a multiple of 16, at most T (rounded)
    assert expert_capacity(1024, 2, 8, 1.0) == 256
    assert expert_capacity(1000, 2, 8, 1.0) == 256  # 250 -> 256
    assert expert_capacity(16384, 2, 8, 1.25) == math.ceil(1.25 * 16384 * 2 / 8)
    assert expert_capacity(64, 2, 4, 100.0) == 64
    assert expert_capacity(10, 1, 4, 0.01) == 16


@pytest.mark.parametrize("grouped", [True, False])
def test_large_capacity_equals_dropless(grouped, monkeypatch):
    """With a capacity that drops nothing, fixed capacity == dropless: outputs and gradients."""
    torch.manual_seed(1)
    x = torch.randn(3, 40, D)
    dropless = make_moe(0.0)
    monkeypatch.setattr(moe_lib, "_GROUPED_MM_OK", {})
    if not grouped:  # the fallback dropless path (no grouped_mm): capacity T per expert
        monkeypatch.setattr(moe_lib, "probe_grouped_mm", lambda *a: False)
    fixed = clone_with_cf(dropless, float(E))  # C = T: no assignment can be dropped
    with torch.no_grad():  # an eager forward probes grouped_mm itself, even under no_grad
        dropless(x)
    assert moe_lib.grouped_mm_usable(x.device, x.dtype, D, HMULT * D) == grouped
    y0, gx0, g0, aux0 = fwd_bwd(dropless, x)
    y1, gx1, g1, aux1 = fwd_bwd(fixed, x)
    assert float(aux1["dropped"]) == 0.0
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx1, gx0, rtol=1e-5, atol=1e-6)
    for n in g0:  # the weight gradients sum each expert's rows in another order (token-major slots)
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=2e-5, msg=n)
    torch.testing.assert_close(aux1["aux_loss"], aux0["aux_loss"])
    torch.testing.assert_close(aux1["load"], aux0["load"])
    # and both equal the straightforward per-assignment loop
    with torch.no_grad():
        y_ref, _, _ = reference(dropless, x, cap=None)
    torch.testing.assert_close(y0, y_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("order", ["token", "choice"])
@pytest.mark.parametrize("cf,n_tok", [(0.25, 96), (1.0, 128)])
def test_small_capacity_drops_exactly_past_capacity_in_the_drop_order(cf, n_tok, order):
    m = make_moe(cf, seed=3, coeff=0.0, order=order)  # no balance loss: the reference has none
    with torch.no_grad():  # skew the router so some experts overflow
        m.router.weight[0] += 0.8
        m.router.weight[1] += 0.4
    torch.manual_seed(2)
    x = torch.randn(2, n_tok // 2, D)
    cap = expert_capacity(n_tok, K, E, cf)
    assert cap == {0.25: 16, 1.0: 64}[cf]
    y, gx, grads, aux = fwd_bwd(m, x)
    # the reference, differentiated by autograd, gives the same gradients
    xr = x.clone().requires_grad_(True)
    m.zero_grad()
    y_ref, kept, choice = reference(m, xr, cap, order)
    g = torch.linspace(-1, 1, y_ref.numel()).view_as(y_ref)
    (y_ref * g).sum().backward()
    n_dropped = int((~kept).sum())
    assert n_dropped > 0  # the test exercises drops
    assert float(aux["dropped"]) == n_dropped
    assert float(aux["assigned"]) == n_tok * K
    torch.testing.assert_close(y, y_ref.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gx, xr.grad, rtol=1e-4, atol=1e-5)
    for name in ("experts.w_fc", "experts.w_proj", "router.weight"):
        torch.testing.assert_close(grads[name], dict(m.named_parameters())[name].grad, rtol=1e-4, atol=1e-5)
    for e in range(E):
        if order == "choice":  # no second choice is kept while a first choice was dropped
            first_dropped = bool(((choice[:, 0] == e) & ~kept[:, 0]).any())
            second_kept = bool(((choice[:, 1] == e) & kept[:, 1]).any())
            assert not (first_dropped and second_kept), e
        else:  # token order: what an expert keeps is its first tokens, a dropped one has none kept after it
            mine = (choice == e).flatten()
            kept_mine = kept.flatten()[mine]
            assert not (~kept_mine[:-1] & kept_mine[1:]).any(), e
    # each expert keeps exactly min(routed, cap)
    for e in range(E):
        routed = int((choice == e).sum())
        assert int(((choice == e) & kept).sum()) == min(routed, cap)
    torch.testing.assert_close(aux["load"], torch.bincount(choice.flatten(), minlength=E).float())


def test_balance_loss_is_on_the_fork_s_scale_k_at_uniform_and_rises_with_imbalance():
    coeff = 0.05
    m = make_moe(1.0, coeff=coeff)
    x = torch.randn(4, 32, D)
    with torch.no_grad():
        m.router.weight.zero_()  # uniform router probabilities
        _, aux = m(x)
    torch.testing.assert_close(aux["bal"], torch.tensor(float(K)))  # f sums to k, P to 1: E * k/E * 1/E * E
    torch.testing.assert_close(aux["aux_loss"], torch.tensor(coeff * K))
    values = []
    for skew in (0.5, 2.0, 8.0):  # push the router towards expert 0, harder each time
        with torch.no_grad():
            m.router.weight.zero_()
            m.router.weight[0] = skew * x.reshape(-1, D).mean(0) / x.reshape(-1, D).mean(0).norm() ** 2
            _, aux = m(x)
        values.append(float(aux["bal"]))
    assert K < values[0] < values[1] < values[2] <= E
    # the formula itself, f = counts / T: balanced routing -> k, all probability and choices on
    # the same k experts -> E
    probs = torch.full((8, E), 1.0 / E)
    assert float(balance_loss(probs, torch.full((E,), 8 * K // E))) == pytest.approx(K)
    probs = torch.zeros(8, E)
    probs[:, :K] = 1.0 / K
    assert float(balance_loss(probs, torch.tensor([8, 8, 0, 0]))) == pytest.approx(E)


@pytest.mark.slow
def test_fixed_capacity_compiles_fullgraph_static_without_recompiles():
    torch._dynamo.reset()
    m = make_moe(1.0)
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(m, backend=counter, fullgraph=True, dynamic=False)
    opt = torch.optim.AdamW(m.parameters(), lr=0.05)
    loads = []
    for step in range(5):
        torch.manual_seed(100 + step)
        x = torch.randn(2, 64, D) * (1 + step)  # different routing each step
        y, aux = compiled(x)
        (y.square().mean() + aux["aux_loss"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loads.append(aux["load"].tolist())
    assert counter.frame_count == 1
    assert len({tuple(v) for v in loads}) > 1  # routing did change between steps
    torch._dynamo.reset()


@pytest.mark.slow
def test_gpt_training_steps_do_not_recompile():
    """The whole model, with MoE in fixed-capacity mode, over training steps (dynamo only)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = tiny_moe_gpt(1.0)
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=False)
    opt = model.setup_optimizer(0.2, 0.004, 0.01)
    for step in range(4):
        idx = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(step))
        loss, stats = compiled(idx, idx.roll(-1, 1))
        loss.backward()
        opt.step()
        model.zero_grad(set_to_none=True)
    assert counter.frame_count == 1
    torch._dynamo.reset()


@pytest.mark.slow
def test_fixed_capacity_compiles_dynamic_over_batch_shapes():
    """--compile-mode dynamic with a fixed capacity: one graph serves every batch shape (the
    capacity is an integer expression of the token count, no float symbols)."""
    torch._dynamo.reset()
    model = tiny_moe_gpt(1.25, sequence_len=64, window_pattern="L")  # a short window is a branch on T
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(model, backend=counter, dynamic=True)
    for b, t in [(2, 32), (3, 64), (4, 48)]:
        idx = torch.randint(0, 64, (b, t))
        loss, stats = compiled(idx, idx)
        loss.backward()
        assert float(stats["assigned"]) == model.config.n_layer * b * t * 2
    assert counter.frame_count == 1
    torch._dynamo.reset()


class CudaAutocastPow(torch.overrides.TorchFunctionMode):
    """CPU autocast keeps pow in bf16; CUDA autocast runs it in fp32 (its fp32 op list), and so
    `.square()`, which is pow(x, 2). This mode gives CPU that CUDA behaviour for pow/square, so
    the tests below see what the GPU sees."""

    FP32_OPS = {torch.pow, torch.Tensor.pow, torch.square, torch.Tensor.square, torch.Tensor.__pow__}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self.FP32_OPS and torch.is_autocast_enabled("cpu") and out.dtype == torch.bfloat16:
            return out.float()
        return out


class GroupedMmDtypes(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the operand dtypes of every aten._grouped_mm call (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[torch.dtype, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket == torch.ops.aten._grouped_mm:
            self.calls.append((args[0].dtype, args[1].dtype))
        return func(*args, **(kwargs or {}))


def test_relu_squared_stays_bf16_where_autocast_runs_pow_in_fp32():
    x = torch.randn(8, 16, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16), CudaAutocastPow():
        assert torch.nn.functional.relu(x).square().dtype == torch.float32  # the hazard, emulated
        assert moe_lib.relu_squared(x).dtype == torch.bfloat16
    torch.testing.assert_close(moe_lib.relu_squared(x), torch.relu(x) ** 2)


def test_dropless_grouped_matmuls_run_in_bf16_under_autocast():
    """Under bf16 autocast every grouped matmul, forward and backward, gets bf16 operands (on CUDA
    any other dtype takes ATen's per-group fallback, which syncs with the host), also where
    autocast would run pointwise ops in fp32 as CUDA's does."""
    m = make_moe(0.0)
    x = torch.randn(2, 32, D, requires_grad=True)
    assert moe_lib.probe_grouped_mm(x.device, torch.bfloat16, D, HMULT * D)
    record = GroupedMmDtypes()
    with record:
        with torch.autocast("cpu", dtype=torch.bfloat16), CudaAutocastPow():
            y, aux = m(x)
        (y.float().square().sum() + aux["aux_loss"]).backward()
    assert len(record.calls) == 6  # 2 forward, and 2 (input and weight gradient) per matmul backward
    assert set(record.calls) == {(torch.bfloat16, torch.bfloat16)}


@pytest.mark.slow
@pytest.mark.parametrize("autocast", [True, False], ids=["bf16-autocast", "fp32"])
def test_dropless_gpt_compiles_to_one_graph_without_recompiles(autocast):
    """The trainer's dropless model under static compile (as on the GPU: bf16 autocast; as on CPU:
    fp32): one graph, no recompile over steps whose routing changes, and the eager result."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = tiny_moe_gpt(0.0)
    dtype = torch.bfloat16 if autocast else torch.float32
    assert moe_lib.probe_grouped_mm(torch.device("cpu"), dtype, 32, 64)  # the grouped path is taken
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, dynamic=False)  # no fullgraph: breaks would show
    opt = model.setup_optimizer(0.2, 0.004, 0.01)
    loads = []
    with torch._dynamo.config.patch(error_on_recompile=True):
        for step in range(3):
            idx = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(step))
            runs = []
            for fn in (model, compiled) if step == 0 else (compiled,):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    loss, stats = fn(idx, idx.roll(-1, 1))
                loss.backward()
                runs.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
                if fn is model:
                    model.zero_grad(set_to_none=True)
            if step == 0:  # compiled == eager (the custom op's backward included)
                tol = dict(rtol=2e-2, atol=2e-3) if autocast else dict(rtol=1e-4, atol=1e-6)
                torch.testing.assert_close(runs[1][0], runs[0][0], **tol)
                for a, b in zip(runs[1][1], runs[0][1], strict=True):
                    torch.testing.assert_close(a, b, **tol)
            opt.step()
            model.zero_grad(set_to_none=True)
            loads.append(tuple(stats["load"].tolist()))
    assert counter.frame_count == 1
    assert len(set(loads)) > 1
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("cf", [0.25, 1.0, 0.0], ids=["cap0.25-masked", "cap1.0-spare-slot", "dropless"])
def test_compiled_block_matches_eager(cf):
    """Under torch.compile the router, dispatch and combine take their compiled forms (indexing
    and sums instead of embedding_bag, bmm and a matmul): same outputs and gradients as eager,
    with drops (a mask below cf 1, the spare slot at cf 1) and dropless."""
    torch._dynamo.reset()
    m = make_moe(cf, seed=5)
    with torch.no_grad():  # skew the router so experts overflow
        m.router.weight[0] += 0.6
    torch.manual_seed(6)
    x = torch.randn(2, 48, D)
    eager = fwd_bwd(m, x)
    m.zero_grad(set_to_none=True)
    compiled = fwd_bwd(torch.compile(m, backend="aot_eager", fullgraph=True, dynamic=False), x)
    if cf:
        assert float(eager[3]["dropped"]) > 0
    for a, b in zip(compiled[:2], eager[:2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for n in eager[2]:
        torch.testing.assert_close(compiled[2]["_orig_mod." + n], eager[2][n], rtol=1e-5, atol=1e-6, msg=n)
    torch._dynamo.reset()
