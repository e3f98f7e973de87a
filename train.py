"""Train a dynamic filter network: python train.py experiment=moving_mnist [overrides]."""

import hydra
from omegaconf import DictConfig

from dfn.run.cli import reporting_user_errors
from dfn.run.experiment import fit_and_test


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with reporting_user_errors():
        metrics = fit_and_test(cfg)
    return metrics.get(cfg.optimized_metric)


if __name__ == "__main__":
    main()
