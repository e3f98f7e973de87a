"""trainer.precision=auto: bf16-mixed on a CPU with bf16 units, float32 on one without (simulated
here through the CPU's flags) and on a GPU; and the one line that says what a run trains with and
how long its schedule takes."""

import logging

import pytest

import dfn.run.hardware as hardware
from dfn.run.experiment import build_model, build_trainer
from dfn.run.hardware import choose_precision, duration
from tests.conftest import smoke_overrides

XEON_AMX = "fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile"
ZEN3 = "fpu sse avx2 fma"  # an AVX2-only CPU: bf16 would be emulated


@pytest.fixture
def cpu_flags(monkeypatch):
    def simulate(flags: str) -> None:
        monkeypatch.setattr(hardware, "cpu_info", lambda: {"flags": flags})
        monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: False)

    return simulate


@pytest.mark.parametrize(
    ("flags", "accelerator", "expected"),
    [
        (XEON_AMX, "auto", "bf16-mixed"),
        (XEON_AMX, "cpu", "bf16-mixed"),
        ("avx512f avx512_bf16", "auto", "bf16-mixed"),
        (ZEN3, "auto", "32-true"),
        (ZEN3, "cpu", "32-true"),
        (XEON_AMX, "gpu", "32-true"),  # a GPU trains in float32, whatever the host CPU
    ],
)
def test_auto_takes_bf16_only_where_the_cpu_has_bf16_units(cpu_flags, flags, accelerator, expected):
    cpu_flags(flags)
    precision, why = choose_precision("auto", accelerator)
    assert precision == expected
    assert ("no bf16 units" in why) == (expected == "32-true" and accelerator != "gpu")


def test_a_precision_that_is_set_is_kept(cpu_flags):
    cpu_flags(ZEN3)
    assert choose_precision("bf16-mixed", "auto") == ("bf16-mixed", "as configured")
    cpu_flags(XEON_AMX)
    assert choose_precision("32-true", "cpu") == ("32-true", "as configured")


@pytest.mark.parametrize(("flags", "expected"), [(ZEN3, "32-true"), (XEON_AMX, "bf16-mixed")])
def test_the_video_configs_train_with_the_cpus_choice(cpu_flags, compose_cfg, flags, expected):
    cpu_flags(flags)
    cfg = compose_cfg(["experiment=moving_mnist", *smoke_overrides("moving_mnist")])
    assert cfg.trainer.precision == "auto"
    assert build_trainer(cfg).precision == expected
    steerable = compose_cfg(["experiment=steerable", *smoke_overrides("steerable")])
    assert build_trainer(steerable).precision == "32-true"  # pinned: bf16 cannot resolve its error


def test_a_run_says_how_long_its_schedule_takes(compose_cfg, caplog):
    cfg = compose_cfg(
        [
            "experiment=steerable",
            *smoke_overrides("steerable"),
            "trainer.max_steps=6",
            "callbacks.schedule_estimate.warmup=1",
            "callbacks.schedule_estimate.timed=2",
        ]
    )
    datamodule, model = build_model(cfg)
    trainer = build_trainer(cfg)
    with caplog.at_level(logging.INFO, logger="dfn.run.hardware"):
        trainer.fit(model, datamodule=datamodule)
    lines = [r.getMessage() for r in caplog.records if r.name == "dfn.run.hardware"]
    assert len(lines) == 1, lines
    assert lines[0].startswith("CPU ")
    assert " threads: 32-true, " in lines[0]
    assert "so the 3 steps to trainer.max_steps=6 take about " in lines[0]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(40, "40 s"), (720, "12.0 min"), (27000, "7.5 h"), (3.2 * 86400, "3.2 days")],
)
def test_durations_read_in_their_largest_unit(seconds, text):
    assert duration(seconds) == text
