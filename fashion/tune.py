"""Hyperparameter search with Optuna over the same `train(cfg)` every run uses.

    fashion-train hparams_search=optuna                       # or: fashion-tune hparams_search=optuna
    fashion-train hparams_search=optuna hparams_search.n_trials=50 data=subset

Each trial composes the command-line config plus its sampled overrides, trains (pruned early by
Optuna when it lags), and is an MLflow run tagged `sweep=<study>` and `optuna_trial=<n>`, nested under the
launch's parent run `optuna <study>`, which names the best trial (`best_run_id`). The study
lives in SQLite beside the MLflow store, so a second launch continues it. The best trial (the launch's command line
and its choices) is written out as an experiment config: `fashion-train experiment=<name>` reruns it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import hydra
import optuna
import pydantic
import yaml
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fashion.cli import one_line_errors, quote, refuse_what_no_config_has
from fashion.config import CONFIG_DIR, ConfigError, validate_config, without_password
from fashion.validation import AtLeastZero, describe

log = logging.getLogger("fashion.tune")


class SearchedKey(pydantic.BaseModel):
    """An entry of `hparams_search.params`: how Optuna samples that key."""

    model_config = pydantic.ConfigDict(extra="forbid")
    type: Literal["float", "int", "categorical"]
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: list[Any] | None = None

    @pydantic.model_validator(mode="after")
    def _complete(self) -> SearchedKey:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical key needs choices: [a, b, ...]")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"a {self.type} key needs low <= high")
        elif self.log and self.low <= 0:
            raise ValueError("log: true needs low > 0")
        return self


class Study(pydantic.BaseModel):
    """`hparams_search`, checked before the study is opened: Optuna ran a study of `n_trials=-1` or `timeout=-5`
    as one of no trial (exit 0, "no completed trial") and refused `direction=up` with a traceback."""

    model_config = pydantic.ConfigDict(extra="forbid")
    study_name: str
    storage: str
    direction: Literal["maximize", "minimize"]
    n_trials: AtLeastZero | None = None   # None: until `timeout`, or Ctrl-C
    timeout: Annotated[float, pydantic.Field(gt=0)] | None = None
    sampler: dict[str, Any]
    pruner: dict[str, Any] | None = None
    best_experiment_file: str
    params: dict[str, SearchedKey] = pydantic.Field(min_length=1)

    @pydantic.field_validator("best_experiment_file")
    @classmethod
    def _a_recipe(cls, path: str) -> str:   # found after the whole study: "rerun with" named a file Hydra cannot find
        if Path(path).parent.name != "experiment" or Path(path).suffix != ".yaml":
            raise ValueError(f"{path!r} is no recipe `experiment=<name>` can find: write it as <folder>/experiment/<name>.yaml")
        return path


def checked_study(search: DictConfig) -> Study:
    try:
        return Study.model_validate(OmegaConf.to_container(search, resolve=True))
    except pydantic.ValidationError as err:
        raise ConfigError(describe(err, "hparams_search")) from None


def suggest(trial: optuna.Trial, name: str, space: SearchedKey) -> Any:
    """One value of a searched key."""
    if space.type == "float":
        return trial.suggest_float(name, space.low, space.high, log=space.log, step=space.step)
    if space.type == "int":
        return trial.suggest_int(name, int(space.low), int(space.high), log=space.log, step=int(space.step or 1))
    return trial.suggest_categorical(name, space.choices)


def experiment_yaml(overrides: list[str], study: str, value: float) -> str:
    """A `conf/experiment` file that trains as the best trial did: the launch's own command line and the trial's
    choices, so `experiment=<name>` alone reruns what the study measured (it wrote the searched keys only, and a
    study tuned on `data=subset` or another recipe was rerun on the defaults)."""
    header = (f"# @package _global_\n# Best trial of Optuna study '{study}' (objective {value:.4f}), written by fashion-tune:"
              f"\n#   {' '.join(overrides)}\n")
    return header + yaml.safe_dump(recipe(overrides), sort_keys=False)


def recipe(overrides: list[str]) -> dict[str, Any]:
    """An experiment file's body that composes as `overrides` do: their group choices as `override /<group>` entries,
    then each key whose value those choices alone do not give. Where runs are written (`paths`) is left out."""
    chosen = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    choices, default = chosen.hydra.runtime.choices, compose(config_name="train", return_hydra_config=True).hydra.runtime.choices
    groups = {group: choices.get(group) for group in default   # a group removed (~scheduler) is chosen as null
              if "/" not in group and group not in ("experiment", "paths") and choices.get(group) != default[group]}
    plain = compose(config_name="train", overrides=[f"{g}={c}" if c is not None else f"~{g}" for g, c in groups.items()])
    wanted, given = ({k: v for k, v in OmegaConf.to_container(c, resolve=False).items() if k not in ("hydra", "paths")}
                     for c in (chosen, plain))
    body: dict[str, Any] = {"defaults": [{f"override /{g}": c} for g, c in groups.items()]} if groups else {}
    return body | differences(wanted, given)


def differences(wanted: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of `wanted` (nested) whose value `given` lacks or holds otherwise; one `wanted` lacks (`~key`) is null,
    as a recipe sets it (`callbacks.early_stopping: null` leaves the callback out)."""
    found: dict[str, Any] = {key: None for key in given if key not in wanted}
    for key, value in wanted.items():
        if isinstance(value, Mapping) and isinstance(given.get(key), Mapping):
            if inner := differences(value, given[key]):
                found[key] = inner
        elif key not in given or given[key] != value:
            found[key] = value
    return found


def open_study(search: DictConfig, metric: str) -> optuna.Study:
    """The study `search` names, created or continued. A storage that cannot be opened (a folder that does
    not exist, an unknown database scheme) is a config value to fix, named as one, not a stack trace."""
    from sqlalchemy.exc import SQLAlchemyError   # Optuna's storage layer

    try:
        study = optuna.create_study(study_name=search.study_name, storage=search.storage, direction=search.direction,
                                    sampler=instantiate(search.sampler), pruner=instantiate(search.pruner),
                                    load_if_exists=True)
    except SQLAlchemyError as err:
        reason = (str(err.orig) if getattr(err, "orig", None) else str(err)).strip().splitlines()[0]   # one line
        raise ConfigError(f"hparams_search.storage={without_password(search.storage)}: cannot open the study there ({reason})") from err
    refuse_another_objective(study, search, metric)
    return study


def refuse_another_objective(study: optuna.Study, search: DictConfig, metric: str) -> None:
    """Optuna continues a stored study with the direction it was created with and whatever values it is given: a
    study of val/mean_acc continued with `optimized_metric=val/loss` (the study name is the same unless changed)
    ranked losses as accuracies, and its best trial was the worst. A study records its metric from now on."""
    recorded = study.user_attrs.get("optimized_metric")
    direction = study.direction.name.lower()
    if recorded not in (None, metric) or direction != search.direction:
        recorded_as = f"optimizes {recorded}" if recorded else f"{direction}s its metric"
        raise ConfigError(f"hparams_search.study_name={search.study_name}: that study ({without_password(search.storage)}) {recorded_as}, "
                          f"not {metric} ({search.direction}): give another hparams_search.study_name"
                          + (f", or optimized_metric={recorded} to continue it" if recorded else ""))
    if recorded is None:
        study.set_user_attr("optimized_metric", metric)


def tune(cfg: DictConfig) -> float:
    """Run (or continue) the study declared in `cfg.hparams_search`; return the best value."""
    from fashion.tracking.run import end_sweep, start_sweep   # MLflow and Lightning: loaded once a study is asked for
    from fashion.training.callbacks import OptunaPruning
    from fashion.training.fit import train
    from fashion.training.module import TrainingDiverged

    validate_config(cfg)   # the command line's config, before the study is stored (each trial's is checked again)
    search, space = cfg.hparams_search, checked_study(cfg.hparams_search).params
    monitor = cfg.optimized_metric
    base = [o for o in HydraConfig.get().overrides.task if not o.split("=")[0].lstrip("+~").startswith("hparams_search")]
    trials_dir = Path(cfg.paths.output_dir)

    def objective(trial: optuna.Trial) -> float:
        params = {name: suggest(trial, name, key) for name, key in space.items()}
        overrides = [*base, *(f"{k}={v}" for k, v in params.items()), f"paths.output_dir={trials_dir / f'trial_{trial.number}'}",
                     f"+tags.sweep={search.study_name}", f"+tags.optuna_trial={trial.number}",
                     "logger.run_name=" + quote(f"trial {trial.number} · " + ",".join(f"{k}={v}" for k, v in params.items())),
                     ]
        trial_cfg = compose(config_name="train", overrides=overrides)
        # A pruned trial did not fail: its MLflow run ends KILLED.
        metrics = train(trial_cfg, extra_callbacks=[OptunaPruning(trial, monitor)], stopped_by=(optuna.TrialPruned,))
        return metrics.get(f"best/{monitor}", metrics[monitor])

    # First, so a tracking server that does not answer stops the launch before the study is stored.
    sweep = start_sweep(cfg, f"optuna {search.study_name}")   # the trials nest under it; the best is marked on it
    try:
        study = open_study(search, monitor)
        # A trial whose loss diverged (a learning rate too high) fails, its run FAILED; the study goes on.
        study.optimize(objective, n_trials=search.n_trials, timeout=search.get("timeout"), catch=(TrainingDiverged,))
    except BaseException as stop:   # Ctrl-C ends the study KILLED, as it ends the trial it interrupted
        end_sweep(cfg, sweep, "KILLED" if isinstance(stop, KeyboardInterrupt) else "FAILED")
        raise
    end_sweep(cfg, sweep)
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not finished:
        log.warning("study %s has no completed trial (all pruned or failed)", search.study_name)
        return float("nan")
    best = study.best_trial
    target = Path(search.best_experiment_file)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(experiment_yaml([*base, *(f"{k}={v}" for k, v in best.params.items())], search.study_name, best.value))
    print(f"\nbest trial {best.number}: {monitor} = {best.value:.4f} with {best.params}\n"
          f"written to {target}: rerun with  {rerun_command(target)}\n")
    return float(best.value)


def rerun_command(experiment_file: Path) -> str:
    """How to train the written recipe: `experiment=<name>` finds only conf/experiment/ of the configs in use, so a
    file elsewhere (`best_experiment_file=`, or ./conf/experiment of an installed wheel) needs its config folder
    added to Hydra's search path."""
    folder = experiment_file.resolve().parent
    search = "" if folder == (CONFIG_DIR / "experiment").resolve() else f"--config-dir {folder.parent} "
    return f"fashion-train {search}experiment={experiment_file.stem}"


def main() -> None:
    refuse_what_no_config_has("fashion-tune", "train", sys.argv[1:])   # one line, before Hydra's own refusal
    run()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
@one_line_errors("fashion-tune")
def run(cfg: DictConfig) -> float:
    if not cfg.get("hparams_search"):
        raise ConfigError("no search space: give one, e.g. fashion-tune hparams_search=optuna")
    return tune(cfg)


if __name__ == "__main__":
    main()
