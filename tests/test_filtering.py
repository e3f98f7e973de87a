"""The dynamic filtering op: fast implementations against the unfold reference, and its checks."""

import functools
import os
import subprocess
import sys
import textwrap
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dfn.ops import cpp, filtering
from dfn.ops.filtering import (
    DynamicConv,
    DynamicLocalFilter,
    dynamic_conv,
    dynamic_local_filter,
    dynamic_local_filter_reference,
    expected_displacement,
)

KERNELS = [(1, 1), (3, 3), (9, 9), (11, 11), (1, 13), (13, 13)]
# The C++ kernel is built on first use. Without a compiler its tests skip; with one (the CI
# machine has gcc) a failing build fails them.
NEEDS_COMPILER = pytest.mark.skipif(
    cpp.compiler() is None, reason="impl='cpp' needs a C++ compiler (c++, or $CXX): none here"
)
# the implementations that share _ShiftLocalFilter: PyTorch ops per tap, and the C++ kernel
FAST_IMPLS = ["shift", pytest.param("cpp", marks=NEEDS_COMPILER)]


def make_inputs(batch, channels, size, kernel, per_channel, bias_channels, dtype=torch.float64):
    """x, filters, bias (or None) for a local filter, all requiring grad."""
    gen = torch.Generator().manual_seed(0)
    taps = kernel[0] * kernel[1]
    x = torch.randn(batch, channels, *size, generator=gen, dtype=dtype)
    filter_shape = (batch, channels, taps, *size) if per_channel else (batch, taps, *size)
    filters = torch.randn(filter_shape, generator=gen, dtype=dtype)
    bias = None
    if bias_channels is not None:
        bias = torch.randn(batch, bias_channels, *size, generator=gen, dtype=dtype)
    return [t if t is None else t.requires_grad_() for t in (x, filters, bias)]


def value_and_grads(fn, x, filters, bias, grad_seed=1):
    """fn's output and the gradients of <output, fixed random small integers> for each input.

    Small integers are exact in every dtype, so runs in different dtypes get the same weights.
    """
    inputs = [t for t in (x, filters, bias) if t is not None]
    out = fn(x, filters, bias)
    gen = torch.Generator().manual_seed(grad_seed)
    weight = torch.randint(-4, 5, out.shape, generator=gen).to(out.dtype)
    grads = torch.autograd.grad((out * weight).sum(), inputs)
    return out, grads


def assert_matches_reference(impl, x, filters, kernel, bias, **tolerances):
    """impl's value and gradients against the reference's, on the same inputs."""
    expected, expected_grads = value_and_grads(
        lambda *a: dynamic_local_filter_reference(*a[:2], kernel, a[2]), x, filters, bias
    )
    got, grads = value_and_grads(
        lambda *a: dynamic_local_filter(*a[:2], kernel, a[2], impl=impl), x, filters, bias
    )
    torch.testing.assert_close(got, expected, **tolerances)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, **tolerances)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: f"{k[0]}x{k[1]}")
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("per_channel", [False, True], ids=["shared", "per_channel"])
@pytest.mark.parametrize("bias_channels", [None, 1, "C"], ids=["no_bias", "bias1", "biasC"])
def test_matches_reference(impl, kernel, channels, per_channel, bias_channels):
    # H != W, and B = 1 for the three-channel cases
    batch = 1 if channels == 3 else 2
    bias_channels = channels if bias_channels == "C" else bias_channels
    x, filters, bias = make_inputs(batch, channels, (10, 7), kernel, per_channel, bias_channels)
    assert_matches_reference(impl, x, filters, kernel, bias)


@NEEDS_COMPILER
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(
    "kernel", [(3, 3), (9, 9), (1, 13), (5, 3)], ids=lambda k: f"{k[0]}x{k[1]}"
)
@pytest.mark.parametrize("channels", [1, 3, 6])
@pytest.mark.parametrize("width", [16, 37, 64])
def test_cpp_kernel_paths_match_reference(width, channels, kernel, dtype):
    """Rows wide enough for the C++ kernel's vector code: chunks of 1, 2 and 4 vectors, masked
    row ends, a scalar tail (37), streaming stores (16, 64), channels summed in blocks of up to
    4 (6 = 4 + 2); shared and per-channel filters, bias per channel."""
    tolerances = {} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-4}
    for per_channel in (False, True):
        inputs = make_inputs(2, channels, (5, width), kernel, per_channel, channels, dtype=dtype)
        assert_matches_reference("cpp", inputs[0], inputs[1], kernel, inputs[2], **tolerances)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_non_finite_filters_only_reach_their_pixels(impl):
    # the C++ kernel reads the filters beyond a row's ends and masks what it read there
    kernel = (3, 5)
    x, filters, _ = make_inputs(2, 3, (6, 37), kernel, False, None)
    with torch.no_grad():
        filters[0, 0, 3, 0] = float("inf")  # a row's first pixel
        filters[1, -1, 5, -1] = float("nan")  # the last pixel of the tensor
        filters[0, 7, 0, 18] = float("-inf")
    assert_matches_reference(impl, x, filters, kernel, None, equal_nan=True)


@NEEDS_COMPILER
@pytest.mark.parametrize("per_channel", [False, True], ids=["shared", "per_channel"])
def test_cpp_gradients_overwrite_the_reused_memory_they_are_given(per_channel):
    """The backward's gradients go into memory kept from call to call (fresh memory costs a page
    fault per page): blocks freed full of NaN come back for the next gradients of their sizes,
    which must overwrite them everywhere."""
    assert cpp.cpp_available()
    kernel = (3, 5)
    x, filters, bias = make_inputs(2, 3, (6, 40), kernel, per_channel, 1, dtype=torch.float32)
    stale = [torch.ops.dfn.reusable_empty_like(t).fill_(float("nan")) for t in (filters, x)]
    addresses = {t.data_ptr() for t in stale}
    del stale
    out = dynamic_local_filter(x, filters, kernel, bias, impl="cpp")
    (grad_filters,) = torch.autograd.grad(out.square().sum(), filters, retain_graph=True)
    assert grad_filters.data_ptr() in addresses  # the reused block
    expected = dynamic_local_filter_reference(x, filters, kernel, bias)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), filters)
    torch.testing.assert_close(grad_filters, expected_grad, rtol=1e-5, atol=1e-4)
    assert_matches_reference("cpp", x, filters, kernel, bias, rtol=1e-5, atol=1e-4)


@NEEDS_COMPILER
def test_cpp_results_do_not_depend_on_threads():
    """Each thread owns whole samples (and channels of per-channel filters): same bits."""
    threads = torch.get_num_threads()
    for per_channel in (False, True):
        x, filters, bias = make_inputs(3, 5, (6, 40), (3, 5), per_channel, 1, dtype=torch.float32)
        results = []
        try:
            for count in (1, 2):
                torch.set_num_threads(count)
                out, grads = value_and_grads(
                    lambda *a: dynamic_local_filter(*a[:2], (3, 5), a[2], impl="cpp"),
                    x,
                    filters,
                    bias,
                )
                results.append([out, *grads])
        finally:
            torch.set_num_threads(threads)
        for one, two in zip(*results, strict=True):
            assert torch.equal(one, two)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize(
    "kernel, channels, per_channel, bias_channels",
    [((3, 3), 2, False, 1), ((3, 5), 2, True, 2), ((1, 3), 1, False, None), ((5, 3), 3, False, 3)],
)
def test_gradcheck(impl, kernel, channels, per_channel, bias_channels):
    x, filters, bias = make_inputs(1, channels, (5, 4), kernel, per_channel, bias_channels)
    inputs = [t for t in (x, filters, bias) if t is not None]

    def fn(*args):
        return dynamic_local_filter(args[0], args[1], kernel, *args[2:], impl=impl)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("per_channel", [False, True], ids=["shared", "per_channel"])
def test_low_precision_sums_in_float32(impl, dtype, per_channel):
    x, filters, bias = make_inputs(2, 3, (9, 8), (9, 9), per_channel, 1, dtype=dtype)
    got, grads = value_and_grads(
        lambda *a: dynamic_local_filter(*a[:2], 9, a[2], impl=impl), x, filters, bias
    )
    assert got.dtype == dtype and all(g.dtype == dtype for g in grads)
    # 81 products summed in float32: the error is the result's rounding to dtype, not the sum's
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-3}[dtype]
    rounded = [t.detach().double().requires_grad_() for t in (x, filters, bias)]
    expected, expected_grads = value_and_grads(
        lambda *a: dynamic_local_filter_reference(*a[:2], 9, a[2]), *rounded
    )
    for value, expected_value in zip((got, *grads), (expected, *expected_grads), strict=True):
        atol = tol * expected_value.abs().max().item()
        torch.testing.assert_close(value.double(), expected_value, rtol=0, atol=atol)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_mixed_dtypes_promote_like_reference(impl):
    # e.g. float32 frames with bfloat16 filters from a generator run under autocast
    x, filters, bias = make_inputs(1, 2, (5, 6), (3, 3), False, 1, dtype=torch.float32)
    filters = filters.detach().bfloat16().requires_grad_()
    expected, expected_grads = value_and_grads(
        lambda *a: dynamic_local_filter_reference(*a[:2], 3, a[2]), x, filters, bias
    )
    got, grads = value_and_grads(
        lambda *a: dynamic_local_filter(*a[:2], 3, a[2], impl=impl), x, filters, bias
    )
    assert got.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(got, expected)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert grad.dtype == expected_grad.dtype
        torch.testing.assert_close(grad, expected_grad, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_channels_last_input(impl):
    x, filters, bias = make_inputs(2, 3, (6, 9), (3, 5), False, 3)
    x_last = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    expected, expected_grads = value_and_grads(
        lambda *a: dynamic_local_filter_reference(*a[:2], (3, 5), a[2]), x, filters, bias
    )
    got, grads = value_and_grads(
        lambda *a: dynamic_local_filter(*a[:2], (3, 5), a[2], impl=impl), x_last, filters, bias
    )
    torch.testing.assert_close(got, expected)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad)
    assert grads[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize(
    "wanted", ["filters_bias", "x", "filters", "bias", "x_bias"], ids=lambda w: w
)
@pytest.mark.parametrize("bias_channels", [1, 2], ids=["bias1", "biasC"])
def test_gradients_only_where_asked(impl, wanted, bias_channels):
    inputs = make_inputs(1, 2, (5, 6), (3, 3), False, bias_channels)
    names = ("x", "filters", "bias")
    for name, tensor in zip(names, inputs, strict=True):
        tensor.requires_grad_(name in wanted.split("_"))
    x, filters, bias = inputs
    out = dynamic_local_filter(x, filters, 3, bias, impl=impl)
    weight = torch.arange(out.numel(), dtype=out.dtype).view_as(out)
    out.backward(weight)
    reference_inputs = [t.detach().requires_grad_() for t in inputs]
    reference_out = dynamic_local_filter_reference(*reference_inputs[:2], 3, reference_inputs[2])
    reference_out.backward(weight)
    torch.testing.assert_close(out, reference_out)
    for name, tensor, reference in zip(names, inputs, reference_inputs, strict=True):
        if name in wanted.split("_"):
            torch.testing.assert_close(tensor.grad, reference.grad)
        else:
            assert tensor.grad is None
    if "x" in wanted and "bias" in wanted:
        assert x.grad.data_ptr() != bias.grad.data_ptr()  # two gradients, two tensors


def test_impl_choice_and_module():
    x, filters, bias = make_inputs(1, 1, (4, 5), (3, 3), False, 1)
    generated = torch.cat([filters, bias], dim=1).detach()
    layer = DynamicLocalFilter(3, dynamic_bias=True, impl="shift")
    assert layer.taps == 9 and layer.generated_channels == 10
    split_filters, split_bias = layer.split(generated)
    torch.testing.assert_close(split_filters.sum(dim=1), torch.ones(1, 4, 5, dtype=x.dtype))
    expected_layer = dynamic_local_filter_reference(x, split_filters, 3, split_bias)
    filtered, applied = layer(x, generated)  # the module also returns the filters it applied
    torch.testing.assert_close(filtered, expected_layer)
    torch.testing.assert_close(applied, split_filters)
    expected = dynamic_local_filter_reference(x, filters, 3, bias)
    for impl in ("auto", "reference", "shift"):
        torch.testing.assert_close(dynamic_local_filter(x, filters, 3, bias, impl=impl), expected)
        layer = DynamicLocalFilter(3, dynamic_bias=True, impl=impl)
        torch.testing.assert_close(layer(x, generated)[0], expected_layer)
    with pytest.raises(ValueError, match="impl must be one of"):
        dynamic_local_filter(x, filters, 3, impl="unfold")
    with pytest.raises(ValueError, match="impl must be one of"):
        DynamicLocalFilter(3, impl="cuda")


@NEEDS_COMPILER
def test_auto_on_the_cpu_is_the_cpp_kernel_where_it_builds():
    x, filters, _ = make_inputs(1, 2, (4, 5), (3, 3), False, None)
    assert cpp.cpp_available() and filtering._resolve_impl("auto", x) == "cpp"
    expected = dynamic_local_filter_reference(x, filters, 3)
    layer = DynamicLocalFilter(3, softmax=False, impl="cpp")
    torch.testing.assert_close(layer(x, filters)[0], expected)


def test_auto_off_the_cpu_is_triton_or_else_the_reference(monkeypatch):
    x = torch.zeros(1, 1, 2, 2, device="meta")  # any non-CPU device; tests/test_cuda.py: CUDA
    monkeypatch.setattr(filtering, "triton_available", lambda: False)
    assert filtering._resolve_impl("auto", x) == "reference"


def test_auto_falls_back_to_shift_once_without_the_cpp_kernel(monkeypatch):
    monkeypatch.setattr(cpp, "build_problem", lambda: "no C++ compiler (test)")
    x, filters, bias = make_inputs(1, 1, (4, 5), (3, 3), False, 1)
    expected = dynamic_local_filter_reference(x, filters, 3, bias)
    with pytest.warns(RuntimeWarning, match=r"'shift'.*no C\+\+ compiler \(test\)") as caught:
        for _ in range(3):
            torch.testing.assert_close(dynamic_local_filter(x, filters, 3, bias), expected)
    assert len(caught) == 1
    assert filtering._resolve_impl("auto", x) == "shift"
    with pytest.raises(ValueError, match=r"impl='cpp'.*no C\+\+ compiler \(test\)"):
        dynamic_local_filter(x, filters, 3, bias, impl="cpp")


def test_cpp_impl_needs_cpu_tensors():
    x, filters = torch.zeros(1, 1, 4, 5, device="meta"), torch.zeros(1, 9, 4, 5, device="meta")
    with pytest.raises(ValueError, match="impl='cpp' needs CPU tensors, got x on meta"):
        dynamic_local_filter(x, filters, 3, impl="cpp")


@pytest.mark.parametrize("compiler", ["missing", "broken"])
def test_cpp_build_failure_is_reported(tmp_path, compiler):
    """No compiler, or one that fails, for real: auto warns once and uses shift; impl='cpp'
    names the problem.

    A fresh extension folder, so that nothing is cached; in its own process, so that this
    session's loaded kernel does not count.
    """
    script = textwrap.dedent(
        """
        import warnings
        import torch

        from dfn.ops.filtering import dynamic_local_filter, dynamic_local_filter_reference

        x, filters = torch.randn(1, 2, 4, 5), torch.randn(1, 9, 4, 5)
        expected = dynamic_local_filter_reference(x, filters, 3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):
                torch.testing.assert_close(dynamic_local_filter(x, filters, 3), expected)
        assert len(caught) == 1, caught
        print("WARNING:", caught[0].message)
        try:
            dynamic_local_filter(x, filters, 3, impl="cpp")
        except ValueError as error:
            print("ERROR:", error)
        """
    )
    cxx = tmp_path / f"{compiler}-compiler"
    if compiler == "broken":
        cxx.write_text("#!/bin/sh\necho 'this compiler is broken' >&2\nexit 1\n")
        cxx.chmod(0o755)
    env = {**os.environ, "CXX": str(cxx), "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions")}
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert ("compiling the C++ kernels" in done.stderr) == (compiler == "broken")
    warning, error = done.stdout.split("ERROR:")
    for message in (warning, error):
        assert "local_filter.cpp) is not available" in message
        if compiler == "missing":
            assert f"no C++ compiler: '{cxx}' is not found" in message
        else:
            assert "building it failed" in message and str(cxx) in message
    assert "'shift'" in warning and "impl='cpp'" in error


def test_checkouts_of_the_same_source_share_one_build(tmp_path, monkeypatch):
    """The build runs from a copy of the source in its folder, so that ninja's build file is the
    same for every checkout: one does not rebuild the kernel for another."""
    from torch.utils import cpp_extension

    sources = []

    def load(name, source_files, **options):
        sources.append(Path(source_files[0]))

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(cpp, "compiler", lambda: "c++")
    monkeypatch.setattr(cpp_extension, "load", load)
    for _ in range(2):
        cpp.build_problem.cache_clear()
        assert cpp.build_problem() is None
    cpp.build_problem.cache_clear()  # the next test loads the real kernels again
    assert sources[0] == sources[1] and sources[0].parent.parent == tmp_path
    assert sources[0].read_bytes() == cpp.SOURCE.read_bytes()


def test_triton_impl_needs_cuda(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, filters, _ = make_inputs(1, 1, (4, 5), (3, 3), False, None)
    with pytest.raises(ValueError, match="needs CUDA tensors, got x on cpu"):
        dynamic_local_filter(x, filters, 3, impl="triton")


@pytest.mark.skipif(find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernels_in_interpreter():
    """The Triton kernels, run by Triton's CPU interpreter on small shapes against the reference.

    TRITON_INTERPRET must be set before triton is imported, so this runs in its own process.
    """
    script = textwrap.dedent(
        """
        import torch
        from dfn.ops.filtering import dynamic_local_filter, dynamic_local_filter_reference

        cases = [  # x, filters, bias shapes, kernel, channels-last x
            # shared filters, two channel blocks, broadcast bias, channels-last
            ((1, 6, 5, 4), (1, 9, 5, 4), (1, 1, 5, 4), (3, 3), True),
            # per-channel filters, rectangular kernel, per-channel bias
            ((2, 3, 4, 5), (2, 3, 15, 4, 5), (2, 3, 4, 5), (3, 5), False),
            # one channel, a 1x13 kernel wider than the image, no bias
            ((1, 1, 3, 8), (1, 13, 3, 8), None, (1, 13), False),
            # more pixels than a block (64 in the interpreter), per-channel, broadcast bias
            ((2, 2, 9, 10), (2, 2, 9, 9, 10), (2, 1, 9, 10), (3, 3), False),
        ]
        for x_shape, f_shape, b_shape, kernel, channels_last in cases:
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(x_shape, generator=gen)
            if channels_last:
                x = x.to(memory_format=torch.channels_last)
            inputs = [x, torch.randn(f_shape, generator=gen)]
            if b_shape is not None:
                inputs.append(torch.randn(b_shape, generator=gen))
            weight = torch.randn(x_shape, generator=gen)
            results = []
            for impl in ("triton", "reference"):
                leaves = [t.clone().requires_grad_() for t in inputs]
                out = dynamic_local_filter(leaves[0], leaves[1], kernel, *leaves[2:], impl=impl)
                (out * weight).sum().backward()
                results.append([out] + [t.grad for t in leaves])
            for got, expected in zip(*results, strict=True):
                torch.testing.assert_close(got, expected)
        print("ok")
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


@pytest.mark.parametrize("kernel", [(3, 3), (1, 5), (5, 3)], ids=lambda k: f"{k[0]}x{k[1]}")
@pytest.mark.parametrize("per_channel", [False, True], ids=["shared", "per_channel"])
def test_dynamic_conv_matches_per_sample_conv(kernel, per_channel):
    gen = torch.Generator().manual_seed(0)
    b, c, h, w = 3, 2, 7, 6
    taps = kernel[0] * kernel[1]
    x = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64, requires_grad=True)
    filter_shape = (b, c, taps) if per_channel else (b, taps)
    filters = torch.randn(filter_shape, generator=gen, dtype=torch.float64, requires_grad=True)
    got = dynamic_conv(x, filters, kernel)
    padding = (kernel[0] // 2, kernel[1] // 2)
    per_sample = []
    for sample, sample_filters in zip(x, filters, strict=True):
        weight = sample_filters.reshape(-1, 1, *kernel).expand(c, 1, *kernel)
        per_sample.append(F.conv2d(sample[None], weight, padding=padding, groups=c))
    torch.testing.assert_close(got, torch.cat(per_sample))
    # the same filter at every pixel is a local filter
    everywhere = filters[..., None, None].expand(*filters.shape, h, w)
    torch.testing.assert_close(got, dynamic_local_filter_reference(x, everywhere, kernel))
    assert torch.autograd.gradcheck(
        lambda *a: dynamic_conv(*a, kernel), (x, filters), fast_mode=True
    )


def test_dynamic_conv_module_softmax():
    x = torch.randn(2, 1, 5, 5)
    filters = torch.randn(2, 9)
    expected = dynamic_conv(x, filters.softmax(dim=-1), 3)
    torch.testing.assert_close(DynamicConv(3, softmax=True)(x, filters), expected)


BAD_LOCAL = [  # x shape, filters shape, bias shape, kernel, what the message must name
    ((2, 5, 5), (2, 9, 5, 5), None, 3, ["(2, 5, 5)", "[B, C, H, W]"]),
    ((2, 1, 5, 5), (2, 8, 5, 5), None, 3, ["(2, 8, 5, 5)", "[2, 9, 5, 5]"]),
    ((2, 1, 5, 5), (2, 9, 5), None, 3, ["(2, 9, 5)", "[2, 9, 5, 5]"]),
    ((2, 1, 5, 5), (3, 9, 5, 5), None, 3, ["(3, 9, 5, 5)", "[2, 9, 5, 5]"]),
    ((2, 1, 5, 5), (2, 9, 5, 4), None, 3, ["(2, 9, 5, 4)", "[2, 9, 5, 5]"]),
    ((2, 2, 5, 5), (2, 3, 9, 5, 5), None, 3, ["(2, 3, 9, 5, 5)", "[2, 2, 9, 5, 5]"]),
    ((2, 1, 5, 5), (2, 9, 5, 5), None, (5, 3), ["(2, 9, 5, 5)", "[2, 15, 5, 5]", "5x3"]),
    ((2, 1, 5, 5), (2, 16, 5, 5), None, 4, ["4"]),
    ((2, 1, 5, 5), (2, 6, 5, 5), None, (3, 2), ["(3, 2)"]),
    ((2, 3, 5, 5), (2, 9, 5, 5), (2, 2, 5, 5), 3, ["(2, 2, 5, 5)", "[2, 1, 5, 5]", "[2, 3, 5, 5]"]),
    ((2, 1, 5, 5), (2, 9, 5, 5), (1, 1, 5, 5), 3, ["(1, 1, 5, 5)", "[2, 1, 5, 5]"]),
]


@pytest.mark.parametrize("impl", ["reference", *FAST_IMPLS])
@pytest.mark.parametrize("x_shape, filter_shape, bias_shape, kernel, named", BAD_LOCAL)
def test_local_filter_rejects_bad_shapes(impl, x_shape, filter_shape, bias_shape, kernel, named):
    bias = None if bias_shape is None else torch.zeros(bias_shape)
    fn = (
        dynamic_local_filter_reference
        if impl == "reference"
        else functools.partial(dynamic_local_filter, impl=impl)
    )
    with pytest.raises(ValueError) as error:
        fn(torch.zeros(x_shape), torch.zeros(filter_shape), kernel, bias)
    for text in named:
        assert text in str(error.value)


@pytest.mark.parametrize(
    "x_shape, filter_shape, kernel, named",
    [
        ((2, 5, 5), (2, 9), 3, ["(2, 5, 5)"]),
        ((2, 1, 5, 5), (2, 8), 3, ["(2, 8)", "[2, 9]"]),
        ((2, 1, 5, 5), (3, 9), 3, ["(3, 9)", "[2, 9]"]),
        ((2, 3, 5, 5), (2, 2, 9), 3, ["(2, 2, 9)", "[2, 3, 9]"]),
        ((2, 1, 5, 5), (2, 4), 2, ["2"]),
    ],
)
def test_dynamic_conv_rejects_bad_shapes(x_shape, filter_shape, kernel, named):
    with pytest.raises(ValueError) as error:
        dynamic_conv(torch.zeros(x_shape), torch.zeros(filter_shape), kernel)
    for text in named:
        assert text in str(error.value)


def test_split_rejects_wrong_generator_output():
    with pytest.raises(ValueError, match=r"\[B, 10, H, W\].*\(2, 9, 4, 4\)"):
        DynamicLocalFilter(3, dynamic_bias=True).split(torch.zeros(2, 9, 4, 4))


@pytest.mark.parametrize("kernel", [(3, 3), (9, 9), (1, 13), (5, 3)], ids=str)
def test_expected_displacement_of_one_hot_filters(kernel):
    kh, kw = kernel
    h, w = 2, 3
    # pixel (y, x) puts all its weight on tap (row (y * w + x) % kh, col (y + x) % kw)
    filters = torch.zeros(1, kh * kw, h, w)
    expected = torch.zeros(1, 2, h, w)
    for y in range(h):
        for x in range(w):
            row, col = (y * w + x) % kh, (y + x) % kw
            filters[0, row * kw + col, y, x] = 1
            expected[0, :, y, x] = torch.tensor([col - kw // 2, row - kh // 2])
    torch.testing.assert_close(expected_displacement(filters, kernel), expected)


def test_the_modules_know_their_kernel():
    layer = DynamicLocalFilter((1, 13), dynamic_bias=True)
    assert layer.reach == (0, 6) and layer.generated_channels == 14
    assert repr(layer) == (
        "DynamicLocalFilter(kernel_size=(1, 13), softmax=True, dynamic_bias=True, impl='auto')"
    )
    assert repr(DynamicConv(9)) == "DynamicConv(kernel_size=(9, 9), softmax=False)"
    filters = torch.rand(2, 13, 4, 5).softmax(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # offsets in pixels, float32
        offsets = layer.expected_displacement(filters)
    assert offsets.dtype == torch.float32
    torch.testing.assert_close(offsets, expected_displacement(filters, (1, 13)))


def test_one_hot_filter_moves_pixels_by_its_displacement():
    """The sign convention: a one-hot at offset (dy, dx) copies x[y + dy, x + dx] to (y, x)."""
    x = torch.arange(36.0).view(1, 1, 6, 6)
    filters = torch.zeros(1, 25, 6, 6)
    filters[:, 1 * 5 + 4] = 1  # row 1, col 4: dy = -1, dx = +2
    out = dynamic_local_filter(x, filters, 5)
    assert torch.equal(out[0, 0, 1:, :4], x[0, 0, :-1, 2:])
    dx, dy = expected_displacement(filters, 5)[0, :, 0, 0].tolist()
    assert (dx, dy) == (2.0, -1.0)
