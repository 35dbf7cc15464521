"""Every config group option and every experiment composes and instantiates (lightning-hydra-template style)."""

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import hydra.errors
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fashion.config import CONFIG_DIR
from fashion.models import Backbone
from tests.conftest import tiny_overrides

GROUPS = ["data", "labels", "augmentation", "backbone", "head", "loss", "class_weights", "loss_weighting",
          "optimizer", "scheduler", "trainer", "callbacks", "logger"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_every_group_has_options():
    for group in GROUPS + ["experiment"]:
        assert options(group), group


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS if g != "backbone" for o in options(g)])
def test_group_option_composes_and_instantiates(group, option, compose_config, tmp_path):
    overrides = [f"{group}={option}", f"paths.output_dir={tmp_path}", f"paths.mlruns={tmp_path / 'mlruns'}"]
    if option == "kaggle":
        overrides.append(f"data.root={tmp_path}")
    cfg = compose_config(overrides)
    node = cfg[group]
    if group == "head":
        heads = instantiate(node, in_features=16, num_classes={"gender": 3, "articleType": 7})
        assert heads(torch.randn(2, 16))["articleType"].shape == (2, 7)
    elif group == "loss_weighting":
        weighting = instantiate(node, attributes=["gender", "articleType"])
        assert set(weighting.weights()) == {"gender", "articleType"}
    elif group == "data":
        from fashion.data import Preprocessing
        dm = instantiate(node, preprocessing=Preprocessing(32, (0.5,) * 3, (0.5,) * 3), _convert_="object")
        assert dm.labels.attributes == list(cfg.labels.attributes)
    elif group == "callbacks":
        assert all(instantiate(c) is not None for c in node.values() if c is not None)
    elif group == "trainer":
        if node.accelerator == "cpu":
            assert instantiate(node, logger=False).max_epochs == node.max_epochs
        else:
            assert OmegaConf.to_container(node, resolve=True)["accelerator"] == "gpu"
    elif group == "logger":
        assert instantiate(node)._tracking_uri == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"   # not the project's store
    elif group == "optimizer":
        assert instantiate(node)([torch.nn.Parameter(torch.zeros(1))]).defaults["lr"] == node.lr
    elif group == "scheduler":
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        assert instantiate(node)(opt, total_steps=10) is not None
    else:
        assert instantiate(node, _convert_="object") is not None or group == "class_weights"


@pytest.mark.parametrize("option", options("backbone"))
def test_backbone_option_instantiates_and_runs(option, compose_config, tmp_path):
    cfg = compose_config([f"backbone={option}", "backbone.pretrained=false", f"paths.output_dir={tmp_path}"])
    backbone: Backbone = instantiate(cfg.backbone)
    size = 64
    features = backbone.eval()(torch.randn(1, 3, size, size))
    assert features.shape == (1, backbone.num_features)
    assert backbone.preprocessing.image_size == cfg.backbone.image_size
    trainable, total = sum(p.requires_grad for p in backbone.parameters()), len(list(backbone.parameters()))
    expected = {"frozen": trainable == 0, "partial": 0 < trainable < total, "full": trainable == total}
    assert expected[cfg.backbone.freeze], (cfg.backbone.freeze, trainable, total)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiment_composes_and_builds_the_module(experiment, compose_config, tmp_path, kaggle_folder):
    from fashion.config import validate_config
    from fashion.training.assembly import build_model, build_module

    cfg = compose_config([f"experiment={experiment}", f"paths.output_dir={tmp_path}", f"data.root={kaggle_folder}",
                          "labels.min_count=1", "data.num_workers=0",
                          # a catalogue recipe's held-out years and evaluation sets are not in this small folder
                          "data.out_of_time_years=[]"])
    cfg.data.eval_sets = {}   # an assignment, not the override `data.eval_sets={}`: that merges and keeps the sets
    validate_config(cfg)
    if cfg.backbone.get("pretrained"):
        cfg.backbone.pretrained = False  # no hub here; the recipe is what is under test
    backbone = instantiate(cfg.backbone)
    dm = instantiate(cfg.data, preprocessing=backbone.preprocessing, _convert_="object")
    module = build_module(cfg, dm, build_model(cfg, dm, backbone))
    size = backbone.preprocessing.image_size  # flatten-pooled recipes need their own input size
    logits = module.eval()(torch.randn(2, 3, size, size))
    assert {a: t.shape[1] for a, t in logits.items()} == dm.num_classes


def test_wrong_key_fails_naming_the_key(compose_config):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="backbone.frezee"):
        compose_config(["backbone.frezee=frozen"])
    with pytest.raises(ConfigCompositionException, match="resnet999"):
        compose_config(["backbone=resnet999"])


@pytest.mark.parametrize("override,message", [
    ("backbone.freeze=sometimes", "backbone.freeze: Input should be 'frozen', 'partial' or 'full'"),
    ("backbone.pool=max", "backbone.pool: Input should be 'avg' or 'flatten'"),
    ("backbone.source_jpeg_quality=500", "backbone.source_jpeg_quality: Input should be less than or equal to 100"),
    ("feature_cache.runtime=onnxruntime", "feature_cache.runtime: Input should be 'onnx' or 'torch'"),
    ("labels.rare_classes=drop", "labels.rare_classes: Input should be 'ignore' or 'other'"),
    # a union (int | dict[str, int]): the member that says what is wrong, not one error per member under its label
    ("labels.min_count=-1", "labels.min_count: Input should be greater than or equal to 0 (got -1)"),   # acted as 0
    ("labels.min_count={season:-2}", "labels.min_count.season: Input should be greater than or equal to 0 (got -2)"),
    ("labels.min_count={season:x}", "labels.min_count.season: Input should be a valid integer, unable to parse string"),
    ("head.dropout=lots", "head.dropout: Input should be a valid number"),
    ("optimizer.lr=fast", "optimizer.lr: Input should be a valid number, unable to parse string as a number (got 'fast')"),
    ("data.batch_size=0", "data.batch_size: Input should be greater than or equal to 1 (got 0)"),
    ("data.num_workers=-1", "data.num_workers: Input should be greater than or equal to 0"),
    ("data.true_aspect=0", "data.true_aspect: Input should be greater than 0 (got 0)"),
    ("loss.label_smoothing=2", "loss.label_smoothing: Input should be less than or equal to 1 (got 2)"),
    ("head.dropout=1.5", "head.dropout: Input should be less than or equal to 1 (got 1.5)"),
    ("backbone.image_size=0", "backbone.image_size: Input should be greater than or equal to 8 (got 0)"),
    ("optimized_metric=val/artcleType/acc", "optimized_metric: 'val/artcleType/acc' is not logged by this run"),
    ("ckpt_path=/no/such/last.ckpt", "ckpt_path: no such file: /no/such/last.ckpt"),
    ("split.path=/no/such/split.csv", "split.path: no such file: /no/such/split.csv"),
    ("scheduler.warmup_fraction=-1", "scheduler.warmup_fraction: Input should be greater than or equal to 0 (got -1)"),
    ("callbacks.calibration.target_precision=1.5",   # trained a whole run, then could reach no threshold
     "callbacks.calibration.target_precision: Input should be less than or equal to 1 (got 1.5)"),
    ("callbacks.calibration.target_precision_per_attribute={season:2}",
     "callbacks.calibration.target_precision_per_attribute.season: Input should be less than or equal to 1 (got 2)"),
    # a mode against the metric's kept the worst checkpoint as the best, without a word
    ("optimized_metric=val/loss callbacks.model_checkpoint.mode=max",
     "callbacks.model_checkpoint.mode=max: val/loss is better lower, so min (leave it out: it follows the metric)"),
    ("callbacks.early_stopping.monitor=val/mean_accc",   # found by the callback after the first epoch
     "callbacks.early_stopping.monitor: 'val/mean_accc' is not logged by this run"),
    ("callbacks.early_stopping.mode=min", "callbacks.early_stopping.mode=min: val/mean_acc is better higher, so max"),
    # logged, but after the validation at which the callbacks look: the checkpoint chose on the epoch before's value
    ("callbacks.model_checkpoint.monitor=train/loss_epoch callbacks.model_checkpoint.mode=min",
     "callbacks.model_checkpoint.monitor: 'train/loss_epoch' is logged after the validation at which the callbacks look"),
    # EMAWeights took **kwargs on to torch's AveragedModel: a misspelt key passed, and failed once the run had opened
    ("callbacks.ema={_target_:fashion.training.callbacks.EMAWeights,decay:0.99,update_every:5}",
     "callbacks.ema.update_every: Extra inputs are not permitted"),
    ("callbacks.ema={_target_:fashion.training.callbacks.EMAWeights,decay:1.5}",
     "callbacks.ema.decay: Input should be less than or equal to 1 (got 1.5)"),
    # a class handing **kwargs to its base's takes the base's keys, and no other
    ("+logger.tracking_urii=x", "logger.tracking_urii: Extra inputs are not permitted"),
    ("+class_weights.power=2", "class_weights.power: Extra inputs are not permitted"),   # class_weights=none takes none
    # a record's own checks (dataclass __post_init__) ran only when the data was built: Hydra's "Error in call to target"
    ("split.fractions={train:0.7,val:0.1,test:0.1}", "split.fractions must add up to 1, they add up to 0.9"),
    ("labels.attributes=[gender,colour]", "labels.attributes: unknown ['colour']"),
    ("class_weights=effective_number class_weights.beta=1", "class_weights.beta: Input should be less than 1 (got 1)"),
    ("+extra_features.colour={_target_:fashion.models.ColourHistogram,bins:1}",
     "extra_features.colour.bins: Input should be greater than or equal to 2 (got 1)"),
    # the logger's keys that opening the run sets: a new run was opened in place of the one named, without a word
    ("+logger.run_id=0a1b2c", "logger.run_id: set by the run itself; resume=<run id> continues an MLflow run"),
    ("+logger.tags={owner:me}", "logger.tags: set by the run itself; tags.<key>=<value> adds a run tag"),
    ("+trainer.logger=false", "trainer.logger: set by the run itself; the logger group sets the MLflow logger"),
    ("+trainer.callbacks=[]", "trainer.callbacks: set by the run itself; callbacks.<name>={_target_: ...} adds a callback"),
    ("hparams_search=optuna optimized_metric=val/loss hparams_search.direction=maximize",
     "hparams_search.direction=maximize: val/loss is better lower, so minimize"),
])
def test_wrong_value_fails_before_anything_is_built_naming_the_key(override, message, compose_config, tmp_path):
    """Typed configs: each value is checked against the Literal/type of its class's signature."""
    from fashion.config import ConfigError, validate_config

    validate_config(compose_config([f"paths.output_dir={tmp_path}"]))  # the default passes
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(compose_config([*override.split(), f"paths.output_dir={tmp_path}"]))


def test_a_ckpt_path_that_is_not_a_pytorch_file_is_named_before_the_run(compose_config, tmp_path):
    """Found only at fit before: a traceback from torch.load, after the MLflow run was opened (left FAILED)."""
    import torch

    from fashion.config import ConfigError, validate_config

    real, text, cut = tmp_path / "real.ckpt", tmp_path / "text.ckpt", tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, real)
    text.write_text("not a checkpoint")
    cut.write_bytes(real.read_bytes()[:-200])
    validate_config(compose_config([f"ckpt_path={real}", f"paths.output_dir={tmp_path}"]))
    for bad in (text, cut):
        with pytest.raises(ConfigError, match=re.escape(f"ckpt_path: {bad} is not a PyTorch checkpoint (not a zip archive")):
            validate_config(compose_config([f"ckpt_path={bad}", f"paths.output_dir={tmp_path}"]))


def test_a_dict_key_takes_a_whole_dict_from_the_command_line(compose_config):
    """`key={season: 0.9}`, as the configs' comments show it, was refused ("Key 'season' is not in struct")
    wherever the default was {}: these defaults are null now, and both spellings compose."""
    for override, key, expected in (
            ("callbacks.calibration.target_precision_per_attribute={season:0.9}", "callbacks.calibration.target_precision_per_attribute", {"season": 0.9}),
            ("+callbacks.calibration.target_precision_per_attribute.season=0.9", "callbacks.calibration.target_precision_per_attribute", {"season": 0.9}),
            ("loss_weighting.weights={articleType:2}", "loss_weighting.weights", {"articleType": 2}),
            ("head.hidden_per_attribute={articleType:[256]}", "head.hidden_per_attribute", {"articleType": [256]})):
        cfg = compose_config(["head=mlp", override])
        assert OmegaConf.to_container(OmegaConf.select(cfg, key)) == expected, override


def test_a_value_torch_or_the_module_refuses_fails_before_the_run(tmp_path, kaggle_folder, compose_config):
    """torch checks lr, momentum and betas only when an optimizer is built, Lightning its values when the Trainer
    is: `optimizer.lr=-1` or `trainer.max_epochs=-5` failed after the feature cache filled, in a FAILED MLflow
    run. Both are now built once first."""
    from fashion.config import ConfigError
    from fashion.train import train

    for override, message in (("optimizer.lr=-1", "optimizer (torch.optim.AdamW): Invalid learning rate: -1"),
                              # TaggerModule's own keys (no _target_): -1 trained the backbone up its loss, silently
                              ("module.backbone_lr_scale=-1", "module.backbone_lr_scale: Input should be greater than or equal to 0"),
                              ("optimizer=sgd optimizer.momentum=-0.5", "optimizer (torch.optim.SGD): Invalid momentum value: -0.5"),
                              # Lightning's: checked when the Trainer is built, after the cache and in a FAILED run
                              ("trainer.max_epochs=-5", "trainer: `max_epochs` must be a non-negative integer or -1"),
                              ("trainer.accelerator=tpu", "trainer: "),
                              # torch's: DDP refuses SyncBatchNorm on CPU once the processes are up, a traceback
                              ("trainer=ddp trainer.accelerator=cpu trainer.devices=1",
                               "trainer.sync_batchnorm=true needs GPUs"),
                              # Lightning's Trainer takes these; the run trained, then raised at the best checkpoint
                              ("trainer.limit_train_batches=0", "trainer.limit_train_batches=0 trains nothing"),
                              ("trainer.limit_val_batches=0", "trainer.limit_val_batches=0: validation never runs, "
                               "and callbacks ['early_stopping', 'model_checkpoint'] need its val/mean_acc"),
                              ("trainer.check_val_every_n_epoch=2", "trainer.check_val_every_n_epoch=2 with "
                               "trainer.max_epochs=1: validation never runs"),
                              ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0: at least 1"),
                              ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1 clips nothing"),   # ran unclipped
                              ("seed=-5", "seed=-5: -5 is not in bounds, numpy accepts from 0 to 4294967295"),
                              # train until stopped: the schedule's length was int(inf), an OverflowError at fit
                              ("trainer.max_epochs=-1", "trainer.max_epochs=-1 with trainer.max_steps=-1 trains until "
                               "something stops it (trainer.max_time, early stopping), and the learning-rate schedule "
                               "needs a length: give trainer.max_steps=<n>, or ~scheduler")):
        cfg = compose_config(tiny_overrides(tmp_path, kaggle_folder) + override.split())
        with pytest.raises(ConfigError, match=re.escape(message)):
            train(cfg)
    assert not (tmp_path / "mlruns").exists()   # no run was opened


def test_the_checkpoint_early_stopping_and_optuna_follow_the_direction_of_the_optimized_metric(compose_config):
    for metric, mode in (("val/mean_acc", "max"), ("val/gender/f1", "max"), ("val/loss", "min")):
        cfg = compose_config(["hparams_search=optuna", f"optimized_metric={metric}"])
        assert (cfg.callbacks.model_checkpoint.mode, cfg.callbacks.early_stopping.mode) == (mode, mode), metric
        assert cfg.hparams_search.direction == f"{mode}imize", metric
    cfg = compose_config(["callbacks.model_checkpoint.monitor=val/loss"])   # a callback given its own metric
    assert (cfg.callbacks.model_checkpoint.mode, cfg.callbacks.early_stopping.mode) == ("min", "max")


def test_every_validation_metric_the_run_logs_can_be_the_optimized_metric():
    """The config check keeps its own list of what training logs (the config stage cannot import the metrics):
    every metric AttributeMetrics computes at validation, means included, must pass it."""
    import torch

    from fashion.config import monitored_metric_problems
    from fashion.metrics import AttributeMetrics, logged_names

    metrics = AttributeMetrics({"gender": 3, "articleType": 10}, "val")
    metrics.update({"gender": torch.randn(8, 3), "articleType": torch.randn(8, 10)},
                   {"gender": torch.randint(0, 3, (8,)), "articleType": torch.randint(0, 10, (8,))})
    logged = [*metrics.compute(), "val/loss"]
    assert "val/mean_f1" in logged and "val/articleType/top5" in logged and "val/gender/top5" not in logged
    assert sorted(logged_names({"gender": 3, "articleType": 10}, "val")) == sorted(metrics.compute())
    labels = {"attributes": ["gender", "articleType"]}
    assert [m for m in logged if monitored_metric_problems({"optimized_metric": m, "labels": labels})] == []


def test_a_jpeg_quality_without_a_source_size_fails_naming_both(compose_config, tmp_path):
    cfg = compose_config(["backbone=test_tiny", "backbone.source_jpeg_quality=75", f"paths.output_dir={tmp_path}"])
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match="source_jpeg_quality=75 needs source_max_side"):
        instantiate(cfg.backbone)


def test_wrong_augmentation_parameter_fails_naming_it(compose_config, tmp_path):
    cfg = compose_config(["augmentation=light", "+augmentation.steps.0.pp=0.5", f"paths.output_dir={tmp_path}"])
    from fashion.data import Preprocessing
    augmentation = instantiate(cfg.augmentation)
    with pytest.raises(ValueError, match="'pp' are not valid for transform HorizontalFlip"):
        augmentation.train_transform(Preprocessing(32, (0.5,) * 3, (0.5,) * 3))


def test_kaggle_data_config_requires_a_root(compose_config, tmp_path):
    from omegaconf.errors import MissingMandatoryValue

    cfg = compose_config(["data=kaggle", f"paths.output_dir={tmp_path}"])
    with pytest.raises(MissingMandatoryValue, match="root"):
        _ = cfg.data.root


def test_default_paths_point_inside_the_repo(compose_config, tmp_path):
    cfg = compose_config([f"paths.output_dir={tmp_path}"])
    root = Path(cfg.paths.root)
    assert (root / "conf" / "train.yaml").is_file()
    assert cfg.logger.tracking_uri == f"sqlite:///{root}/mlruns/mlflow.db"


def test_best_cpu_alone_picks_the_whole_catalogue_and_its_outside_sets(compose_config):
    cfg = compose_config(["experiment=best_cpu"])
    assert cfg.data.root.endswith("fashion-product-images-small") and cfg.data.out_of_time_years
    assert "cross_resolution" in cfg.data.eval_sets and cfg.backbone.source_max_side == 80
    assert cfg.backbone.source_jpeg_quality == 75
    assert compose_config(["experiment=best_cpu_subset"]).data.root.endswith("fashion-product-images-subset")
    assert compose_config(["experiment=best_cpu", "data=subset"]).data.root.endswith("fashion-product-images-subset")


def test_output_folders_are_per_run_but_shared_by_the_processes_of_one_distributed_run(monkeypatch):
    """Named to the second, three runs started at once from a shell loop shared one output folder (log,
    .hydra files, checkpoint names). To the microsecond they do not; the ranks of one distributed run must
    still agree. Under torchrun they named it by their own start, to the second: two ranks that started
    either side of a second wrote two folders. They now name it by torchrun's start."""
    for name in ("LOCAL_RANK", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    from fashion.config import launch_time

    assert re.fullmatch(r"\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-\d{6}", launch_time())
    assert "/outputs/${launch_time:}" in (CONFIG_DIR / "hydra" / "default.yaml").read_text()
    with monkeypatch.context() as env:
        env.setenv("SLURM_NTASKS", "8")
        assert re.fullmatch(r"\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d", launch_time())
    ranks, name = [], [sys.executable, "-c", "from fashion.config import launch_time; print(launch_time())"]
    # As torchrun's agent (this process) starts them, 1.1 s apart: either side of a second. Rank 1 runs under
    # a wrapper shell, as `torchrun --no-python` may start one, which has torchrun's variables too; `; exit`
    # keeps bash from exec'ing python in its place.
    for rank, command in (("0", name), ("1", ["bash", "-c", f"{shlex.join(name)}; exit $?"])):
        ranks.append(subprocess.run(command, env={**os.environ, "TORCHELASTIC_RUN_ID": "none", "LOCAL_RANK": rank},
                                    capture_output=True, text=True, check=True).stdout)
        time.sleep(1.1)
    assert ranks[0] == ranks[1] and re.fullmatch(r"\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-\d{6}\n", ranks[0])


def test_what_hydra_would_take_is_not_refused_before_it_composes(capsys, tmp_path):
    """The check before `@hydra.main` asks Hydra (its options, its compose): a search path the command line adds,
    a key appended inside one a config has, a group appended, a forced append, a sweep of groups and a range Hydra
    cannot reduce go on to Hydra; a value of a group's sweep that is no option, or a top-level key appended that no
    config has (in a sweep too), is named."""
    from fashion.cli import refuse_what_no_config_has

    for argv in (["hydra.searchpath=[file:///elsewhere/conf]", "experiment=mine"], ["+tags.owner=me", "++anything=1"],
                 ["+experiment=linear_probe", "+extra_features.colour={_target_:fashion.models.ColourHistogram,bins:8}"],
                 ["-m", "backbone=test_tiny,resnet18", "head=linear,mlp"], ["optimizer.lr=interval(0.001,0.1)"],
                 ["hparams_search=optuna", "~callbacks.progress_bar", "hydra/launcher=joblib"], ["--cfg", "job", "trainer.max_epoch=3"]):
        refuse_what_no_config_has("fashion-train", "train", argv)
    with pytest.raises(SystemExit) as refused:
        refuse_what_no_config_has("fashion-train", "train", ["experiment=mine"])
    assert refused.value.code == 2 and "fashion-train: experiment=mine: no such option; the options: best_cpu" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        refuse_what_no_config_has("fashion-train", "train", ["-m", "head=linear,mpl"])
    assert "head=mpl: no such option (did you mean mlp?)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        refuse_what_no_config_has("fashion-train", "train", ["-m", "+tags.owner=me", "+max_epochs=1,2"])
    assert "+max_epochs adds a key no config has, so nothing would read it (did you mean trainer.max_epochs?)" \
        in capsys.readouterr().err
    # a folder of recipes the command line adds, as fashion-tune's "rerun with" names one: its keys are searched
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "tuned_study.yaml").write_text("# @package _global_\ntrainer:\n  max_epochs: 2\n")
    for flags in (["--config-dir", str(tmp_path)], [f"--config-dir={tmp_path}"], ["-cd", str(tmp_path)]):
        refuse_what_no_config_has("fashion-train", "train", [*flags, "experiment=tuned_study", "+tags.owner=me"])
        for wrong, said in (("+max_epochs=3", "+max_epochs adds a key no config has"), ("trainer.max_epoch=3", "no key trainer.max_epoch")):
            with pytest.raises(SystemExit):
                refuse_what_no_config_has("fashion-train", "train", [*flags, "experiment=tuned_study", wrong])
            assert said in capsys.readouterr().err
    # a group only that folder has is appended as a group, not refused as a key nothing reads
    (tmp_path / "mygroup").mkdir()
    (tmp_path / "mygroup" / "mine.yaml").write_text("depth: 1\n")
    refuse_what_no_config_has("fashion-train", "train", ["--config-dir", str(tmp_path), "+mygroup=mine"])
    # a recipe without its `# @package _global_` line: its keys would sit under experiment.*, read by nothing
    (tmp_path / "experiment" / "headless.yaml").write_text("trainer:\n  max_epochs: 2\n")
    with pytest.raises(SystemExit):
        refuse_what_no_config_has("fashion-train", "train", ["--config-dir", str(tmp_path), "experiment=headless"])
    assert ("experiment=headless: its file lacks the first line `# @package _global_`, so its keys (trainer) land under "
            "experiment.* and nothing reads them") in capsys.readouterr().err
    with pytest.raises(SystemExit):   # a sweep's other recipes too, not only its first
        refuse_what_no_config_has("fashion-train", "train", ["-m", "--config-dir", str(tmp_path), "experiment=tuned_study,headless"])
    assert "experiment=headless: its file lacks the first line" in capsys.readouterr().err


# Commands the docs show failing, on purpose: each must still be refused.
SHOWN_REFUSED = {"+max_epochs=3", "backbone.freeze=sometimes", "trainer.max_epoch=3", "loss_weighting=fixed,uncertanty"}


def documented_training_commands() -> list[tuple[str, list[str]]]:
    """Every `fashion-train key=value ...` of the README, docs/ and the configs' comments, as (file, overrides), less
    launcher choices (plugins) and placeholders (`<study>`, `...`)."""
    root, found = CONFIG_DIR.parent, []
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted(CONFIG_DIR.rglob("*.yaml"))]:
        for match in re.finditer(r"fashion-train ((?:[^`|#\n\\]|\\\n)*)", path.read_text()):
            try:
                words = shlex.split(match.group(1).replace("\\\n", " "))
            except ValueError:   # prose that quotes the command
                continue
            overrides = [w for w in words if "=" in w and "<" not in w and "..." not in w and "tuned_" not in w
                         and not w.startswith(("hydra/launcher", "hydra.", "["))]
            if overrides and "experiment=mine" not in overrides:
                found.append((path.name, overrides))
    return found


def test_every_training_command_the_docs_show_composes_and_passes_the_config_check(compose_config, tmp_path, capsys):
    """A reader copies these to reproduce a result or to learn a key: one a rename left behind would fail for them."""
    from fashion.cli import UsageError, refuse_what_no_config_has
    from fashion.config import ConfigError, validate_config

    commands = documented_training_commands()
    assert len(commands) > 30 and any(o == ["experiment=best_cpu"] for _, o in commands)
    refused = []
    for where, overrides in commands:
        try:   # as fashion-train checks a command line: before Hydra, then the composed config
            refuse_what_no_config_has("fashion-train", "train", overrides)
            first = [o if "{" in o or "[" in o else o.split(",")[0] for o in overrides]   # a sweep's first job
            validate_config(compose_config([*first, f"paths.output_dir={tmp_path}"]))
        except (UsageError, ConfigError, hydra.errors.HydraException, OmegaConfBaseException) as err:
            said = capsys.readouterr().err if isinstance(err, UsageError) else str(err)   # the refusal prints its line
            if not SHOWN_REFUSED & set(overrides):
                refused.append(f"{where}: {' '.join(overrides)}: {said.strip().splitlines()[0]}")
            continue
        assert not SHOWN_REFUSED & set(overrides), f"{where} shows {overrides} refused, and it is not"
    assert not refused, "\n".join(refused)
