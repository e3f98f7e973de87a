"""Train a dynamic filter network: python train.py experiment=moving_mnist [overrides];
continue a run in its folder: python train.py resume=outputs/runs/<run> [overrides]."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dfn.run.cli import command_line, reporting_user_errors
from dfn.run.experiment import fit_and_test


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with reporting_user_errors():
        metrics = fit_and_test(cfg)
    return metrics.get(cfg.optimized_metric)


if __name__ == "__main__":
    with reporting_user_errors():
        sys.argv = command_line(sys.argv, "resume", Path(__file__).parent / "configs")
    main()
