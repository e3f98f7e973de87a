"""Evaluate a checkpoint on the experiment's test set: python eval.py run=outputs/runs/<run>, or
python eval.py experiment=moving_mnist ckpt_path=outputs/runs/.../checkpoints/step_020000.ckpt,
or the weights that ship with the project: python eval.py pretrained=moving_mnist"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dfn.run.cli import command_line, reporting_user_errors
from dfn.run.experiment import evaluate
from dfn.run.pretrained import pretrained_argv


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    with reporting_user_errors():
        evaluate(cfg)


if __name__ == "__main__":
    with reporting_user_errors():
        sys.argv = command_line(pretrained_argv(sys.argv), "run", Path(__file__).parent / "configs")
    main()
