"""Filter-generating networks, the predictor's rollout and the per-frame metrics."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure

import dfn.models.generators as generators
from dfn.errors import InputError
from dfn.models.generators import Conv2d, FilterGenerator, UntiedBiasConv
from dfn.models.predictor import EPS, ConvHead, DynamicFilterPredictor, FilterHead
from dfn.ops.filtering import DynamicLocalFilter, expected_displacement
from dfn.tasks.metrics import METRICS, PSNR_CAP, FrameMetrics, frame_metrics


def mnist_generator(**kwargs):
    return FilterGenerator(
        image_size=16,
        encoder=[8, "8s2", 16],
        recurrent=[16, 16],
        decoder=[8, "up", 8],
        head=[16],
        **kwargs,
    )


def make_predictor(head=FilterHead, frames_per_step=1, kernel_size=5, dynamic_bias=False):
    return DynamicFilterPredictor(
        mnist_generator, DynamicLocalFilter(kernel_size, True, dynamic_bias), head, frames_per_step
    )


def test_he_uniform_init_bounds_and_zero_biases():
    g = FilterGenerator(1, 81, 64, [32, "32s2", "64u"], [64, "up", 32])
    for m in g.modules():
        if isinstance(m, torch.nn.Conv2d):
            bound = math.sqrt(3 / m.weight[0].numel())
            assert m.weight.abs().max() <= bound
            assert m.weight.abs().max() > 0.9 * bound  # uniform over the whole range
            if m.bias is not None:
                assert not m.bias.any()
    untied = [m for m in g.modules() if isinstance(m, UntiedBiasConv)]
    assert untied[0].bias.shape == (64, 32, 32)


def test_generator_spec_errors_are_clear():
    with pytest.raises(InputError, match="unknown generator layer '3x3'"):
        FilterGenerator(1, 9, 16, [8, "3x3"], [8])
    with pytest.raises(InputError, match="maps \\(16, 16\\) to \\(8, 8\\)"):
        FilterGenerator(1, 9, 16, [8, "8s2"], [8])


def test_recurrence_adds_the_hidden_state_to_the_encoder_output():
    g = mnist_generator(in_channels=1, out_channels=3)
    x = torch.rand(2, 1, 16, 16)
    _, h1 = g(x)
    encoded = g.encoder(x)
    assert torch.allclose(h1, encoded + g.recurrent(torch.zeros_like(encoded)))
    _, h2 = g(x, h1)
    assert torch.allclose(h2, encoded + g.recurrent(h1))


def step_by_step(p: DynamicFilterPredictor, context: torch.Tensor, num_predicted: int):
    """The rollout written plainly: every step the whole generator, then the next frame."""
    frames, hidden, predictions = list(context.unbind(1)), None, []
    k = p.frames_per_step
    for s in range(context.shape[1] - k + num_predicted):
        frame, _, hidden = p.step(torch.cat(frames[s : s + k], 1), hidden)
        if s + k >= context.shape[1]:
            frames.append(frame)
            predictions.append(frame)
    return torch.stack(predictions, 1)


def loss_and_grads(p, rollout, context, target, autocast: bool):
    p.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = F.mse_loss(rollout(p, context, target.shape[1]).float(), target.float())
    loss.backward()
    return loss.detach(), torch.cat([q.grad.flatten() for q in p.parameters()])


@pytest.mark.parametrize(
    ("dtype", "autocast", "frames_per_step", "tolerance"),
    [
        (torch.float64, False, 1, 1e-12),
        (torch.float64, False, 2, 1e-12),
        (torch.float32, False, 1, 1e-5),
        (torch.float32, True, 1, 2**-8),  # bf16-mixed: bf16 rounds to 2^-9 relative
        (torch.float32, True, 2, 2**-8),
    ],
)
def test_rollout_is_the_step_by_step_rollout_in_values_and_gradients(
    dtype, autocast, frames_per_step, tolerance
):
    """The rollout runs the encoder over the known windows as one batch and skips the decoder
    where a step's prediction is not needed: the same loss and gradients as the whole generator
    step by step, to rounding (float64), or within bf16's rounding (bf16-mixed)."""
    torch.manual_seed(0)
    p = make_predictor(frames_per_step=frames_per_step, dynamic_bias=frames_per_step == 2)
    p.to(dtype)
    context, target = torch.rand(2, 4, 1, 16, 16, dtype=dtype), torch.rand(2, 3, 1, 16, 16)
    predictions, filters = p.rollout(context, 3)
    assert predictions.shape == (2, 3, 1, 16, 16) and len(filters) == 3
    fast = loss_and_grads(p, lambda p, c, n: p.rollout(c, n)[0], context, target, autocast)
    plain = loss_and_grads(p, step_by_step, context, target, autocast)
    assert fast[0].item() == pytest.approx(plain[0].item(), rel=tolerance)
    assert (fast[1] - plain[1]).norm() <= tolerance * plain[1].norm()


def bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).double()


def test_bf16_convolution_without_bf16_kernels_rounds_as_onednn_does(monkeypatch):
    """Emulated (a CPU without bf16 kernels): float32 arithmetic on bf16-rounded operands, one
    rounding of each result to bf16, which is what oneDNN's bf16 kernels compute. Against
    float64 on the rounded operands, rounded once: the same bf16 value almost everywhere (a sum
    within float32 rounding of a rounding boundary may fall the other way), never 2 steps off."""
    monkeypatch.setattr(generators, "native_bf16", lambda: False)
    torch.manual_seed(0)
    conv = Conv2d(8, 16, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 12, 12).contiguous(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn(2, 16, 12, 12).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
    assert out.dtype == torch.bfloat16
    out.backward(grad)
    operands = [bf16(t).requires_grad_() for t in (x, conv.weight, conv.bias)]
    exact = F.conv2d(*operands, padding=1)
    exact_grads = torch.autograd.grad(exact, operands, grad.double())
    for value, expected in zip(
        [out, x.grad, conv.weight.grad, conv.bias.grad], [exact, *exact_grads], strict=True
    ):
        value, expected = value.double(), bf16(expected)
        assert (value == expected).float().mean() > 0.99
        torch.testing.assert_close(value, expected, rtol=2**-7, atol=1e-6)


def test_a_step_with_emulated_bf16_is_a_step_with_torchs_bf16_kernels(monkeypatch):
    """The small model's bf16-mixed loss and gradients, with the emulated convolutions and with
    torch's own bf16 kernels, agree within bf16's rounding (float32 arithmetic without the
    roundings is 0.03 off here: the test tells them apart)."""
    results = {}
    for native in (True, False):
        monkeypatch.setattr(generators, "native_bf16", lambda native=native: native)
        torch.manual_seed(0)
        p = make_predictor()
        context, target = torch.rand(2, 4, 1, 16, 16), torch.rand(2, 3, 1, 16, 16)
        rollout = lambda p, c, n: p.rollout(c, n)[0]  # noqa: E731
        results[native] = loss_and_grads(p, rollout, context, target, autocast=True)
    (loss, grads), (emulated_loss, emulated_grads) = results[True], results[False]
    assert emulated_loss.item() == pytest.approx(loss.item(), rel=2**-8)
    assert (emulated_grads - grads).norm() <= 2**-6 * grads.norm()


def test_two_frames_per_step_and_dynamic_bias_shapes():
    p = make_predictor(frames_per_step=2, kernel_size=3, dynamic_bias=True)
    assert p.generator.encoder[0].in_channels == 2
    assert p.generator.out_channels == 10  # 9 taps + the dynamic bias
    predictions, filters = p.rollout(torch.rand(1, 3, 1, 16, 16), 3)
    assert predictions.shape == (1, 3, 1, 16, 16)
    assert torch.allclose(filters[0].sum(1), torch.ones(1, 16, 16))  # softmax over the taps
    with pytest.raises(InputError, match="context"):
        p.rollout(torch.rand(1, 1, 1, 16, 16), 3)


def test_dfn_prediction_is_a_convex_combination_of_the_last_frame():
    torch.manual_seed(0)
    p = make_predictor()  # a 5x5 softmax filter, no dynamic bias
    frame = torch.rand(3, 1, 16, 16)
    prediction, filters, _ = p.step(frame)
    assert filters.shape == (3, 25, 16, 16)
    assert (filters >= 0).all() and torch.allclose(filters.sum(1), torch.ones(3, 16, 16))
    # each pixel: its own weights times the frame's 5x5 neighbourhood around it (zero padding)
    neighbourhoods = F.unfold(frame, 5, padding=2).view(3, 25, 16, 16)
    torch.testing.assert_close(prediction, (filters * neighbourhoods).sum(1, keepdim=True))


def test_baseline_is_clipped_for_the_bce():
    p = make_predictor(functools.partial(ConvHead, clip_output=True))
    with torch.no_grad():
        p.head.conv.bias.fill_(5.0)
    prediction, filters, _ = p.step(torch.rand(1, 1, 16, 16))
    assert filters is None
    assert prediction.max().item() == pytest.approx(1 - EPS)
    with torch.no_grad():
        p.head.conv.bias.fill_(-5.0)
    assert p.step(torch.rand(1, 1, 16, 16))[0].min().item() == pytest.approx(EPS)


def test_baseline_head_replaces_the_filter_with_a_1x1_conv_of_its_channels():
    torch.manual_seed(0)
    dfn = make_predictor(frames_per_step=2, kernel_size=3, dynamic_bias=True)
    torch.manual_seed(0)
    baseline = make_predictor(ConvHead, frames_per_step=2, kernel_size=3, dynamic_bias=True)
    assert baseline.head.conv.in_channels == 10 and baseline.head.conv.out_channels == 1
    # the same generator from the same seed: the two models differ only in their last layer
    for (name, a), (_, b) in zip(
        dfn.generator.state_dict().items(), baseline.generator.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    extra = sum(p.numel() for p in baseline.parameters()) - sum(p.numel() for p in dfn.parameters())
    assert extra == 10 + 1
    window = torch.rand(2, 2, 16, 16)
    generated, _ = baseline.generator(window)
    prediction, _, _ = baseline.step(window)
    torch.testing.assert_close(prediction, baseline.head.conv(generated))  # linear, not clipped
    assert dfn.head.reach == (1, 1) and baseline.head.reach is None


def test_filter_head_calls_its_filter_on_the_last_frame():
    p = make_predictor(frames_per_step=2, kernel_size=3, dynamic_bias=True)
    window = torch.rand(2, 2, 16, 16)
    generated, _ = p.generator(window)
    prediction, filters, _ = p.step(window)
    expected, expected_filters = p.head.filtering(window[:, 1:], generated)
    torch.testing.assert_close(prediction, expected)
    torch.testing.assert_close(filters, expected_filters)
    torch.testing.assert_close(
        p.head.expected_displacement(filters), expected_displacement(filters, 3)
    )


def test_the_options_show_in_print():
    text = str(make_predictor(kernel_size=3, dynamic_bias=True))
    for option in (
        "frames_per_step=1",
        "in_channels=1, out_channels=10, image_size=(16, 16), hidden state [16, 8, 8]",
        "kernel_size=(3, 3), softmax=True, dynamic_bias=True, impl='auto'",
    ):
        assert option in text, text
    text = str(make_predictor(functools.partial(ConvHead, clip_output=True)))
    assert "ConvHead(\n    clip_output=True\n    (conv): Conv2d(25, 1" in text, text
    untied = FilterGenerator(1, 9, 16, ["4u", "4s2"], ["up", 4])
    assert "untied bias [4, 16, 16]" in str(untied)


def test_frame_metrics_are_summed_over_the_pixels_of_a_frame():
    target = torch.rand(2, 3, 1, 8, 8)
    prediction = (target + 0.1 * torch.randn_like(target)).clamp(0, 1)
    m = frame_metrics(prediction, target)
    assert m["mse"].shape == (2, 3)
    assert torch.allclose(m["mse"][1, 2], ((prediction - target)[1, 2] ** 2).sum())
    assert torch.allclose(m["mae"][0, 1], (prediction - target)[0, 1].abs().sum())
    bce = F.binary_cross_entropy(
        prediction[1, 0].clamp(EPS, 1 - EPS), target[1, 0], reduction="sum"
    )
    assert torch.allclose(m["bce"][1, 0], bce, rtol=1e-5)
    ssim = structural_similarity_index_measure(prediction[0, 2:], target[0, 2:], data_range=1.0)
    assert torch.allclose(m["ssim"][0, 2], ssim)
    psnr = 10 * torch.log10(1 / ((prediction - target)[0, 0] ** 2).mean())
    assert torch.allclose(m["psnr"][0, 0], psnr, rtol=1e-5)


def test_an_exact_frame_has_capped_psnr_so_averages_stay_finite():
    target = torch.rand(1, 2, 1, 8, 8)
    prediction = target.clone()
    prediction[0, 1] = (prediction[0, 1] + 0.1).clamp(0, 1)  # frame 0 exact, frame 1 not
    psnr = frame_metrics(prediction, target)["psnr"]
    assert psnr[0, 0] == PSNR_CAP
    assert psnr[0, 1] < 25
    metrics = FrameMetrics(horizon=2, predictor="copy_last")
    metrics.update(prediction, target)
    assert torch.isfinite(metrics.compute()["copy_last/psnr"])


def test_frame_metrics_stay_float32_under_bf16_autocast():
    target = torch.rand(2, 3, 1, 16, 16)
    prediction = (target + 0.05 * torch.randn_like(target)).clamp(0, 1)
    exact = frame_metrics(prediction, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = frame_metrics(prediction, target)
    for name in exact:
        assert torch.allclose(mixed[name], exact[name]), name
    assert (mixed["ssim"] <= 1).all()


def test_frame_metrics_average_over_samples_and_horizons():
    model, copy_last = FrameMetrics(horizon=2), FrameMetrics(horizon=2, predictor="copy_last")
    target = torch.rand(4, 2, 1, 8, 8)
    model.update(target, target)
    zeros = torch.zeros_like(target)
    copy_last.update(zeros[:2], target[:2])
    copy_last.update(zeros[2:], target[2:])
    out = model.compute() | copy_last.compute()
    horizons = ("", "_t1", "_t2")
    assert out.keys() == {
        f"{p}{m}{k}" for p in ("", "copy_last/") for m in METRICS for k in horizons
    }
    assert out["mse"] == 0 and out["ssim"] == pytest.approx(1.0)
    per_frame = (target**2).flatten(2).sum(2)  # [4, 2]
    assert out["copy_last/mse"] == pytest.approx(per_frame.mean().item(), rel=1e-5)
    assert out["copy_last/mse_t2"] == pytest.approx(per_frame[:, 1].mean().item(), rel=1e-5)
    one_frame = FrameMetrics(horizon=1)
    one_frame.update(target[:, :1], target[:, :1])
    assert one_frame.compute().keys() == set(METRICS)  # no _t1
