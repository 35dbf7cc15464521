"""One command-line style for every entry point: Hydra overrides (`key=value`), as `fashion-train` takes.

The tools (`fashion-predict`, `-eval`, `-export`, `-serve`) compose `conf/<tool>.yaml` with Hydra's
compose API, so a misspelt key fails naming it, and validate the values against the typed signature
of the function the config feeds (`Literal` choices, numbers). `--help` prints the tool's config:
every key, its default and what it does. The older `--flag value` spelling still works (translated
to the same overrides: `--top-k 5` is `top_k=5`, `--no-mlflow` is `mlflow=false`), and bare words
are the tool's `positional` list key (fashion-predict's `inputs`).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import os
import sys
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fashion.config import CONFIG_DIR, InputError, flatten
from fashion.validation import check_fields, list_parameters, switches, text_as_typed, text_parameters


class Refused(SystemExit):
    """Input a tool cannot use (a file, a run, a model): one line on stderr, exit status 2, as a bad
    command line; 1 is kept for a job that finished with some rows or photos left out."""

    def __init__(self, tool: str, message: str) -> None:
        print(f"{tool}: {message}", file=sys.stderr)
        super().__init__(2)


class UsageError(Refused):
    """A bad command line (exit status 2, as argparse does), with where the keys are listed."""

    def __init__(self, tool: str, message: str) -> None:
        super().__init__(tool, f"{message}\n(keys and defaults: {tool} --help)")


Result = TypeVar("Result")


def one_line_errors(tool: str) -> Callable[[Callable[..., Result]], Callable[..., Result]]:
    """For a Hydra entry point, under `@hydra.main`: a value a class refuses (ConfigError), input named as
    unusable where it is (InputError: a styles.csv that is empty, not UTF-8, without a column) or a path that
    does not exist becomes one line and exit status 2, as the other tools report a bad command line,
    instead of Hydra's "Error executing job" and a stack above the one line that matters. Other errors
    keep Hydra's report; HYDRA_FULL_ERROR=1 keeps the traceback of these too. In a sweep (`-m`) they stay
    exceptions, so Hydra marks that job failed and still runs the others, as it does for any error."""
    def wrap(task: Callable[..., Result]) -> Callable[..., Result]:
        @functools.wraps(task)
        def run(cfg: DictConfig, *args: Any, **kwargs: Any) -> Result:
            try:
                return task(cfg, *args, **kwargs)
            except Exception as err:
                # Hydra's instantiate wraps what a class's __init__ refuses: the refusal is the message.
                refused = err.__cause__ if isinstance(err, InstantiationException) else err
                if not said_in_one_line(refused) or os.environ.get("HYDRA_FULL_ERROR") == "1" or in_sweep():
                    raise
                raise UsageError(tool, str(refused)) from None
        return run
    return wrap


def said_in_one_line(err: BaseException | None) -> bool:
    """Input named where it is, and Lightning's refusals of a Trainer value, which name the key and the way
    out (`limit_val_batches=0.5` of one validation batch: "Try at least `limit_val_batches=1.0`") but
    come only once the data is loaded. Lightning is not imported for it: if it is not loaded, it raised nothing."""
    lightning = sys.modules.get("lightning.fabric.utilities.exceptions")
    return isinstance(err, (InputError, FileNotFoundError)) or (
        lightning is not None and isinstance(err, lightning.MisconfigurationException))


def refuse_what_no_config_has(tool: str, config_name: str, argv: Sequence[str]) -> None:
    """Before `@hydra.main` composes: an option a group lacks (`backbone=resnet19`, in a sweep too), a key no
    config has (`trainer.max_epoch=3`) or a top-level key appended that nothing would read (`+max_epochs=3`), in one
    line with the closest real one, exit 2, as the other tools refuse theirs. Hydra's refusal of a key (exit 1)
    advises appending it, and an appended key is composed and never read: the run goes on as if it were not there.
    Hydra itself answers, through its compose API, search path and options (a sweep's keys by its first value), so
    nothing Hydra accepts is refused but such an append; what cannot be reduced so is left to Hydra. A config folder
    the command line adds (`--config-dir`, `hydra.searchpath=`) is searched for keys; its options are Hydra's to list."""
    argv = with_config_dir_as_searchpath(argv)
    if any(arg.startswith("-") and arg not in ("-m", "--multirun") for arg in argv):
        return   # --help, --cfg, --info ...: Hydra's own
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException

    try:
        parsed = OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")])
        values = {o.input_line: list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()] for o in parsed}
    except Exception:   # a syntax error, a sweep of another kind (interval): Hydra says it, as before
        return
    searched = [o for o in parsed if o.key_or_group == "hydra.searchpath"]
    if len(searched) > 1:
        return
    parsed = [o for o in parsed if not o.key_or_group.startswith("hydra") or o in searched]
    overrides = [f"{o.get_key_element()}={values[o.input_line][0]}" if o.is_sweep_override() else o.input_line for o in parsed]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # a search path not there ...: Hydra's own compose says it next
        loader = GlobalHydra.instance().config_loader()
        for override in parsed:
            parent, _, name = override.key_or_group.rpartition("/")
            if override.is_delete() or name not in loader.list_groups(parent) or searched:
                continue
            options = loader.get_group_options(override.key_or_group)
            for option in values[override.input_line]:
                if isinstance(option, str) and option not in options:
                    raise UsageError(tool, missing_option(override.key_or_group, option, options))
        try:
            composed = compose(config_name=config_name, overrides=overrides)
            if headless := headless_recipe(composed, parsed, values, config_name, overrides):
                raise UsageError(tool, misplaced_recipe(*headless))
            unread = unread_append(parsed, config_name, overrides)
            if unread:
                raise UsageError(tool, f"+{unread} adds a key no config has, so nothing would read it"
                                       + closest_keys(unread, config_name, overrides, loader.list_groups("")))
            return
        except ConfigCompositionException as err:
            key = str(err).startswith("Could not override '") and str(err).split("'")[1]
        except Exception:   # anything else Hydra refuses, it says itself
            return
        if key:
            close = closest_keys(key, config_name, overrides, loader.list_groups(""))
            given = next((o for o in overrides if o.partition("=")[0] == key), None)
            parent = key.rpartition(".")[0]
            others = [o for o in overrides if o != given]
            if not close and given and parent and isinstance(OmegaConf.select(compose(config_name=config_name, overrides=others), parent), DictConfig):
                close = f"; to add a key {parent}'s config does not list, append it: +{given}"   # optimizer.betas: AdamW takes it
            raise UsageError(tool, f"no key {key} in the config{close}")


def headless_recipe(composed: DictConfig, parsed: Sequence[Any], values: Mapping[str, list], config_name: str,
                    overrides: Sequence[str]) -> tuple[str, DictConfig] | None:
    """The name and keys of an experiment the command line picks, each one of a sweep (`-m experiment=a,b`), whose file
    lacks `# @package _global_`; `composed` is the config of the first."""
    at = next((i for i, o in enumerate(parsed) if o.key_or_group == "experiment"), None)
    if at is None:
        return None
    for k, name in enumerate(values[parsed[at].input_line]):
        config = composed if k == 0 else compose(config_name=config_name, overrides=[
            *overrides[:at], f"{parsed[at].get_key_element()}={name}", *overrides[at + 1:]])
        if isinstance(config.get("experiment"), DictConfig):
            return str(name), config.experiment
    return None


def misplaced_recipe(name: str, keys: DictConfig) -> str:
    """An experiment file without `# @package _global_` (its first line in every conf/experiment file): Hydra puts its
    keys under `experiment.`, where nothing reads them, and the run goes on with the defaults it meant to change."""
    return (f"experiment={name}: its file lacks the first line `# @package _global_`, so its keys ({', '.join(map(str, keys))}) "
            "land under experiment.* and nothing reads them")


def with_config_dir_as_searchpath(argv: Sequence[str]) -> list[str]:
    """`--config-dir X` (`-cd X`, `--config-dir=X`) as the `hydra.searchpath` override the compose API takes."""
    argv = list(argv)
    for at, arg in enumerate(argv):
        flag, equals, folder = arg.partition("=")
        if flag in ("--config-dir", "-cd") and (equals or at + 1 < len(argv)):
            folder = folder if equals else argv[at + 1]
            argv[at:at + (1 if equals else 2)] = [f"hydra.searchpath=[{quote('file://' + str(Path(folder).resolve()))}]"]
            break
    return argv


def missing_option(group: str, option: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(option, options, n=1)
    return (f"{group}={option}: no such option" + (f" (did you mean {close[0]}?)" if close else "")
            + f"; the options: {', '.join(options)}")


def unread_append(parsed: Sequence[Any], config_name: str, overrides: Sequence[str]) -> str | None:
    """The top-level name of the first key appended with `+` (not a group, not `++`) that the config composed
    without the appends lacks. Appending a group (`+experiment=...`, one of a folder the command line adds too: Hydra's
    own record of the groups it chose says which) or inside a key a config has (`+tags.owner=me`) is Hydra's to take."""
    if not any(o.is_add() and "/" not in o.key_or_group for o in parsed):
        return None
    groups = compose(config_name=config_name, overrides=overrides, return_hydra_config=True).hydra.runtime.choices
    appended = [o.is_add() and "/" not in o.key_or_group and o.key_or_group not in groups for o in parsed]
    others = [text for text, added in zip(overrides, appended) if not added]
    known = {*compose(config_name=config_name, overrides=others), *groups}
    tops = [o.key_or_group.split(".")[0] for o, added in zip(parsed, appended) if added]
    return next((top for top in tops if top not in known), None)


def closest_keys(key: str, config_name: str, overrides: Sequence[str], groups: Sequence[str]) -> str:
    """" (did you mean ...?)" with the closest key of the config composed without `key` (a top-level one for a
    top-level name), or one of the same last name (module.lr: optimizer.lr, +max_epochs: trainer.max_epochs), or a
    group (lossweighting: loss_weighting); "" when none is close."""
    others = [o for o in overrides if not (o.partition("=")[0].lstrip("+~") + ".").startswith(f"{key}.")]
    flat = flatten(OmegaConf.to_container(compose(config_name=config_name, overrides=others), resolve=False))
    tops = [path.split(".")[0] for path in flat] if "." not in key else []   # +lables: labels
    keys = list(dict.fromkeys([*tops, *flat, *groups]))
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.8) or [
        k for k in keys if k.rpartition(".")[2] == key.rpartition(".")[2]][:2]
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def first_few(items: Sequence[str], n: int = 5, sep: str = ", ") -> str:
    """The first `n` of a list a tool prints (lines, rows, photos), and "..." when there are more."""
    return sep.join(items[:n]) + (f"{sep}..." if len(items) > n else "")


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def quote(value: str) -> str:
    """A value as a Hydra override string that survives spaces, commas, quotes and globs."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def to_overrides(argv: Sequence[str], lists: Sequence[str] = (), positional: str | None = None,
                 flags: Collection[str] = (), renamed: Mapping[str, str] | None = None) -> list[str]:
    """`key=value` overrides from a command line that may use the older `--flag value` spelling;
    `flags` are the bool keys, which take no value (`--taxonomy`, `--no-mlflow`); `renamed`: old flag -> key."""
    overrides, bare, index = [], [], 0
    while index < len(argv):
        token = argv[index]
        index += 1
        if not token.startswith("--"):
            (overrides if "=" in token else bare).append(token)
            continue
        name, _, inline = token[2:].partition("=")
        key = (renamed or {}).get(name.replace("-", "_"), name.replace("-", "_"))
        values = [inline] if inline else []
        takes_values = not inline and key.removeprefix("no_") not in flags
        # As argparse: a flag's first value is taken whatever it holds ("=" included); a list's further
        # values run up to the next --flag or key=value.
        while takes_values and index < len(argv) and not argv[index].startswith("--") \
                and (not values or (key in lists and "=" not in argv[index])):
            values.append(argv[index])
            index += 1
        if key in lists:
            overrides.append(f"{key}=[{','.join(quote(v) for v in values)}]")
        elif values:
            overrides.append(f"{key}={quote(values[0])}")
        else:   # a switch: --taxonomy, --no-mlflow
            overrides.append(f"{key.removeprefix('no_')}={'false' if key.startswith('no_') else 'true'}")
    if bare:
        if positional is None:
            raise ValueError(f"unexpected arguments {bare}: give settings as key=value")
        overrides.append(f"{positional}=[{','.join(quote(v) for v in bare)}]")
    return overrides


def refuse_unknown_keys(overrides: Sequence[str], target: Callable[..., Any], config_name: str) -> None:
    """A key the tool's config lacks, named with the closest real one. Hydra's own message says to append
    it (`+key=value`), which a tool refuses next: its keys are its function's parameters, read from the
    signature (composing the config once more to list them cost ~90 ms a start)."""
    keys = list(inspect.signature(target).parameters)
    for override in overrides:
        key = override.lstrip("+~").partition("=")[0].split(".")[0]
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1)
            raise ValueError(f"no key {key!r} in conf/{config_name}.yaml" + (f" (did you mean {close[0]!r}?)" if close else ""))


def tool_config(tool: str, config_name: str, argv: Sequence[str], target: Callable[..., Any],
                positional: str | None = None, renamed: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`target`'s arguments from the composed config, typed by its signature; `--help` prints the config."""
    if {"-h", "--help"} & set(argv):
        keys = (CONFIG_DIR / f"{config_name}.yaml").read_text()
        print(f"usage: {tool} [key=value ...]   (the older --key value spelling also works)\n\n"
              f"{target.__doc__ or ''}\nKeys (conf/{config_name}.yaml):\n\n{keys}")
        raise SystemExit(0)
    try:
        overrides = to_overrides(argv, list_parameters(target), positional, switches(target), renamed)
        refuse_unknown_keys(overrides, target, config_name)
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides)
        values = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        return check_fields(target, values | text_as_typed(overrides, values, text_parameters(target)), "")
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        raise UsageError(tool, str(err).replace("\n", " ")) from None
