"""What only a GPU can show: the Triton kernels and the shift op on CUDA against the unfold
reference, the whole model's training step (eager and captured in a CUDA graph), and smoke runs
of the experiments on the GPU.
Skipped where there is no CUDA device (`scripts/gpu_check.sh` runs them on one)."""

from importlib.util import find_spec

import hydra
import pytest
import torch

from dfn.ops.filtering import _resolve_impl, dynamic_local_filter, dynamic_local_filter_reference
from dfn.run.experiment import fit_and_test
from tests.conftest import EXPERIMENTS, smoke_overrides
from tests.test_filtering import make_inputs, value_and_grads
from tests.test_train import check_smoke_run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CASES = {  # kernel, channels, per-channel filters, bias channels, size
    "9x9 C1": ((9, 9), 1, False, None, (64, 64)),
    "11x11 C1 bias": ((11, 11), 1, False, 1, (40, 36)),
    "1x13 C1": ((1, 13), 1, False, None, (17, 23)),
    "13x13 C3 bias1": ((13, 13), 3, False, 1, (19, 16)),
    "3x5 C3 per-channel biasC": ((3, 5), 3, True, 3, (9, 300)),  # more pixels than a block
    "5x5 C6 per-channel": ((5, 5), 6, True, None, (12, 12)),  # more channels than a block
}


def on_cuda(impl, kernel, dtype=torch.float32, channels_last=False):
    """The op on CUDA in ``dtype``, called on (and returning) CPU tensors, so that autograd
    carries the gradients back to the float64 CPU inputs the reference is computed from."""

    def fn(x, filters, bias):
        x = x.to("cuda", dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        filters = filters.to("cuda", dtype)
        bias = None if bias is None else bias.to("cuda", dtype)
        return dynamic_local_filter(x, filters, kernel, bias, impl=impl).to("cpu", torch.float64)

    return fn


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("impl", ["triton", "shift"])
def test_cuda_impls_match_the_reference(impl, case):
    kernel, channels, per_channel, bias_channels, size = CASES[case]
    inputs = make_inputs(2, channels, size, kernel, per_channel, bias_channels)
    expected, expected_grads = value_and_grads(
        lambda x, f, b: dynamic_local_filter_reference(x, f, kernel, b), *inputs
    )
    got, grads = value_and_grads(on_cuda(impl, kernel), *inputs)
    # float32 sums of up to 169 products of unit normals
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("impl", ["triton", "shift"])
def test_half_precision_accumulates_in_float32(impl, dtype):
    kernel = (9, 9)
    x, filters, bias = make_inputs(2, 3, (32, 32), kernel, False, 1)
    with torch.no_grad():  # the reference sees exactly the rounded values the kernel sees
        for t in (x, filters, bias):
            t.copy_(t.to(dtype))
    expected = dynamic_local_filter_reference(x, filters, kernel, bias)
    got = on_cuda(impl, kernel, dtype)(x, filters, bias)
    # only the final rounding to ``dtype`` is lost: 2^-8 (bf16) or 2^-11 (fp16) relative
    rtol = 2**-8 if dtype == torch.bfloat16 else 2**-11
    torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol)


def test_channels_last_input_on_cuda():
    kernel = (5, 5)
    inputs = make_inputs(2, 3, (20, 24), kernel, False, 3)
    expected, expected_grads = value_and_grads(
        lambda x, f, b: dynamic_local_filter_reference(x, f, kernel, b), *inputs
    )
    got, grads = value_and_grads(on_cuda("triton", kernel, channels_last=True), *inputs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-4)


def test_auto_is_triton_on_cuda():
    assert _resolve_impl("auto", torch.zeros(1, device="cuda")) == "triton"


def test_moving_mnist_training_step_on_cuda_matches_the_reference_op(compose_cfg):
    batch = torch.rand(4, 20, 1, 64, 64, device="cuda")
    losses, grads = {}, {}
    for impl in ("triton", "reference"):
        cfg = compose_cfg(["experiment=moving_mnist", f"model.predictor.filtering.impl={impl}"])
        torch.manual_seed(0)
        model = hydra.utils.instantiate(cfg.model).cuda()
        model.setup("fit")
        loss = model.training_loss(batch)
        loss.backward()
        losses[impl] = loss.item()
        grads[impl] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert losses["triton"] == pytest.approx(losses["reference"], rel=1e-4)
    # cuDNN picks its own algorithms, so the two runs agree to float32 rounding, not bit for bit
    assert torch.nn.functional.cosine_similarity(grads["triton"], grads["reference"], dim=0) > 0.999


def test_training_step_captured_in_a_cuda_graph_trains_like_the_eager_one(compose_cfg):
    """The cuda_graph variant of scripts/benchmark_training.py: warm-up (3 steps), capture, one
    replay is 4 Adam steps, as 4 eager steps are."""
    from scripts.benchmark_training import build_model, captured_step, make_train_step

    cfg = compose_cfg(["experiment=moving_mnist"])
    device = torch.device("cuda")
    batch = torch.rand(4, 20, 1, 64, 64, device=device)
    updates = {}
    for graph in (False, True):
        model = build_model(cfg, device)
        start = torch.cat([p.detach().flatten() for p in model.parameters()])
        optimizer = torch.optim.Adam(model.parameters(), capturable=graph)
        train_step = make_train_step(model, optimizer)
        if graph:
            captured_step(train_step, batch, device)()
        else:
            for _ in range(4):
                train_step(batch)
        updates[graph] = torch.cat([p.detach().flatten() for p in model.parameters()]) - start
    eager, replayed = updates[False], updates[True]
    assert replayed.norm() == pytest.approx(eager.norm().item(), rel=0.01)
    # one step fewer (3 eager steps against 4, on CPU at batch 2) gives a cosine of 0.95
    assert torch.nn.functional.cosine_similarity(replayed, eager, dim=0) > 0.999


@pytest.mark.parametrize(
    "experiment",
    [e for e in EXPERIMENTS if not e.startswith("highway") or find_spec("highway_env")],
)
def test_smoke_run_on_the_gpu_writes_its_metrics_and_figures(compose_cfg, tmp_path, experiment):
    """In bf16 on the GPU, what the CPU smoke run checks (tests/test_train.py)."""
    cfg = compose_cfg(
        [f"experiment={experiment}", *smoke_overrides(experiment), "trainer=gpu",
         "trainer.precision=bf16-mixed"]
    )  # fmt: skip
    written = check_smoke_run(tmp_path / "run", experiment, fit_and_test(cfg))
    assert written["device"] == f"{torch.cuda.get_device_name()} x1"
