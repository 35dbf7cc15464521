"""Train a multi-attribute tagger from a composed Hydra config: `fashion-train [overrides]`.

    fashion-train                                   # default: lite0 on the bundled sample, CPU
    fashion-train experiment=linear_probe data=subset
    fashion-train -m loss_weighting=fixed,uncertainty,dwa   # one MLflow run per job
    fashion-train hparams_search=optuna                     # Optuna study, see fashion/tune.py
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from fashion import lazy_exports
from fashion.cli import one_line_errors, refuse_what_no_config_has
from fashion.config import CONFIG_DIR

# Lightning, timm and MLflow load only once a config has composed: `fashion-train --help` and a
# misspelt override answer in about a second instead of 10-14 s on 2 cores.
__getattr__, _lazy = lazy_exports(__name__, {"fashion.training.fit": ["train"]})
__all__ = ["main", *_lazy]


def main() -> None:
    refuse_what_no_config_has("fashion-train", "train", sys.argv[1:])   # one line, before Hydra's own refusal
    run()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
@one_line_errors("fashion-train")
def run(cfg: DictConfig) -> float:
    if cfg.get("hparams_search"):
        from fashion.tune import tune

        return tune(cfg)
    from fashion.training.fit import train

    metrics = train(cfg)
    monitored = cfg.get("optimized_metric", "val/mean_acc")
    return metrics.get(f"best/{monitored}", metrics.get(monitored, float("nan")))


if __name__ == "__main__":
    main()
