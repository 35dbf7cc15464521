"""Train a multi-attribute tagger from a composed Hydra config: `fashion-train [overrides]`.

    fashion-train                                   # default: lite0 on the bundled sample, CPU
    fashion-train experiment=linear_probe data=subset
    fashion-train -m loss_weighting=fixed,uncertainty,dwa   # one MLflow run per job
    fashion-train hparams_search=optuna                     # Optuna study, see fashion/tune.py
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from fashion.config import CONFIG_DIR
from fashion.training.fit import train
from fashion.tune import tune

__all__ = ["main", "train"]


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    if cfg.get("hparams_search"):
        return tune(cfg)
    metrics = train(cfg)
    monitored = cfg.get("optimized_metric", "val/mean_acc")
    return metrics.get(f"best/{monitored}", metrics.get(monitored, float("nan")))


if __name__ == "__main__":
    main()
