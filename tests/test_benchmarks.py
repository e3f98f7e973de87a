"""scripts/benchmark_training.py starts from what train.py runs, and counts the model's FLOPs from
its layers (not its timings: those are the script's output)."""

import re

import pytest
import torch

from scripts.benchmark_training import make_batch, onednn_primitive, step_flops, variant_overrides
from tests.conftest import run_script

SPREAD = r"([\d.]+) \(([\d.]+)-([\d.]+), ([\d.]+)\)"


def conv_macs(c_in: int, c_out: int, size: int, kernel: int = 3) -> int:
    return c_in * c_out * kernel * kernel * size * size


def test_model_flops_are_the_moving_mnist_generators_convolutions(compose_cfg):
    """The authors' Moving MNIST generator, by hand: the encoder (the stride-2 conv gives 32x32)
    and the recurrence run at all 19 steps, the decoder and head at the 10 predicted ones; the
    backward costs twice the forward. Every stage at every step is the 107 GFLOP a sample of
    the issue's count (docs/PERFORMANCE.md)."""
    encoder = conv_macs(1, 32, 64) + sum(
        conv_macs(a, b, 32) for a, b in [(32, 32), (32, 64), (64, 64), (64, 128)]
    )
    recurrent = 2 * conv_macs(128, 128, 32)
    decoder = conv_macs(128, 64, 32) + conv_macs(64, 64, 32) + 2 * conv_macs(64, 64, 64)
    head = conv_macs(64, 128, 64, 1) + conv_macs(128, 81, 64, 1)
    per_sample = 3 * 2 * (19 * (encoder + recurrent) + 10 * (decoder + head))
    every_stage_every_step = 3 * 2 * 19 * (encoder + recurrent + decoder + head)
    assert every_stage_every_step / 1e9 == pytest.approx(107, abs=0.5)
    cfg = compose_cfg(["experiment=moving_mnist"])
    batch = make_batch(cfg, 2, torch.device("cpu"))
    assert step_flops(cfg, batch, torch.device("cpu")) == 2 * per_sample


def test_variants_name_what_they_change():
    assert variant_overrides("-channels_last +compile") == (
        ["model.channels_last=false", "model.predictor.compile=true"],
        False,
        None,
    )
    assert variant_overrides("precision=bf16-mixed impl=reference +cuda_graph threads=1") == (
        ["trainer.precision=bf16-mixed", "model.predictor.filtering.impl=reference"],
        True,
        1,
    )
    assert variant_overrides("model.predictor.filtering.impl=shift") == (
        ["model.predictor.filtering.impl=shift"],
        False,
        None,
    )
    with pytest.raises(SystemExit, match="unknown change 'channels_last'"):
        variant_overrides("channels_last")


def test_the_first_row_is_the_experiment_as_configured():
    result = run_script(
        "scripts/benchmark_training.py",
        "experiment=stereo",
        "--batch-size=1",
        "--steps=1",
        "--threads=1",
        "--variants=impl=reference threads=2",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "- as configured: trainer.precision=32-true, model.channels_last=True" in out, out
    rows = [line.split(" | ")[0] for line in out.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["| as configured", "| impl=reference threads=2"], out


def test_the_filter_benchmark_reports_the_spread_of_its_calls():
    result = run_script(
        "scripts/benchmark_filtering.py", "--device=cpu", "--only=1x13", "--min-time=0.05"
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split(" | ") for line in result.stdout.splitlines() if "1x13 |" in line]
    assert {row[2] for row in rows} >= {"reference", "shift"}, result.stdout
    for row in rows:  # median (p10-p90, slowest), in ms
        median, p10, p90, slowest = map(float, re.fullmatch(SPREAD, row[3]).groups())
        assert p10 <= median <= p90 <= slowest


def test_the_profile_reads_onednns_log():
    """--profile splits the convolutions by pass and kernel from oneDNN's verbose lines."""
    convolution = (
        "onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,backward_weights,"
        "src:f32::blocked:acdb::f0 wei:f32:a:blocked:Acdb8a::f0,attr-scratchpad:user,"
        "alg:convolution_direct,mb16_ic64oc128_ih32oh32kh3sh1dh0ph1_iw32ow32kw3sw1dw0pw1,2.5"
    )
    assert onednn_primitive(convolution) == (
        "convolution backward_weights (jit:avx2)",
        0.0025,
        2 * 16 * 128 * 32 * 32 * 64 * 3 * 3,
    )
    reorder = "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:blk,undef,src dst,,8x8x3x3,0.5"
    assert onednn_primitive(reorder) == ("reorder", 0.0005, 0.0)
    assert onednn_primitive("onednn_verbose,v1,info,cpu,isa:Intel AVX2") is None
