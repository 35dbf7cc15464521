"""Typed checks from the classes' own signatures, for configs and for plain data from elsewhere.

One mechanism, two strictness levels: a user's composed Hydra config is checked against the
`Literal`/type annotations of each `_target_`'s signature before anything is built (lax: YAML's
1 for 1.0 is fine), and a bundle's or checkpoint's saved architecture with strict schemas
(`fashion.models.architecture`). Errors name each offending key, the way the CLIs print them.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
import typing
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Annotated, Any

import pydantic

# Counts a user sets on a command line (a batch size, top-k, threads, a port): a value out of range is refused
# at the key, by name, instead of surfacing later as a traceback from range() or torch.topk.
AtLeastOne = Annotated[int, pydantic.Field(ge=1)]
AtLeastZero = Annotated[int, pydantic.Field(ge=0)]
AtLeastTwo = Annotated[int, pydantic.Field(ge=2)]
Port = Annotated[int, pydantic.Field(ge=0, le=65535)]
# A width/height ratio (`true_aspect`): 0 or less would squash every photo to a 1-pixel column, silently.
Aspect = Annotated[float, pydantic.Field(gt=0)]
# A rate (dropout, label smoothing): torch refuses others only once training has started.
Probability = Annotated[float, pydantic.Field(ge=0, le=1)]
# A share strictly between 0 and 1 (class_weights.beta: at 1 every class would weigh 0/0).
OpenUnitInterval = Annotated[float, pydantic.Field(gt=0, lt=1)]
# A scale (the backbone's share of the learning rate): below 0 the backbone would climb its loss, silently.
NonNegative = Annotated[float, pydantic.Field(ge=0)]
# An image side in pixels, the range a bundle's preprocessing.json accepts (0 meant "the backbone's default").
ImageSide = Annotated[int, pydantic.Field(ge=8, le=4096)]
# The JPEG qualities `source_jpeg_quality` takes, in a config (Backbone) and in a bundle (preprocessing.json).
JpegQuality = Annotated[int, pydantic.Field(ge=1, le=100)]


def describe(err: pydantic.ValidationError, where: str = "") -> str:
    """`where.field: what is wrong (got value)`, the problems joined by '; '."""
    prefix = f"{where}." if where else ""
    return "; ".join(f"{prefix}{'.'.join(str(p) for p in loc) or 'value'}: {e['msg']} (got {e.get('input')!r:.80})"
                     for loc, e in _without_union_members(err.errors()))


# pydantic's label of a union member: a bare type, a hyphenated name or one with brackets ('float', 'constrained-int',
# 'dict[str,constrained-int]', 'is-instance[Tensor]'), never a field name (an identifier: 'lanes', 'top_k')
UNION_MEMBER = re.compile(r"int|float|str|bool|bytes|none|[a-z]+(-[a-z]+)*\[.*\]|[a-z]+(-[a-z]+)+")
WRONG_KIND = {"is_instance_of", "is_subclass_of", "literal_error", "none_required", "enum", "int_from_float"}


def _without_union_members(errors: list[dict]) -> list[tuple[tuple, dict]]:
    """(key, error) per problem. A value that fits no member of a union (`int | dict[str, int]`) gets one error
    per member, under the member's label: `min_count.constrained-int: ... >= 0; min_count.dict[str,constrained-int]:
    Input should be a valid dictionary`. Keep the errors that say what is wrong with the value over those
    that only say it is of another kind than that member (when there is nothing else, the one deepest in the
    value: a dict with a bad entry names the entry), and drop the labels from the key."""
    def member_at(error: dict) -> int | None:
        loc = error["loc"]
        for k, part in enumerate(loc):
            if isinstance(part, str) and UNION_MEMBER.fullmatch(part) and any(
                    o["loc"][:k] == loc[:k] and len(o["loc"]) > k and o["loc"][k] != part for o in errors):
                return k
        return None

    groups: dict[tuple[bool, tuple], list[tuple[tuple, dict]]] = {}   # (a union's members?, key) -> its errors
    for error in errors:
        loc, k = error["loc"], member_at(error)
        if k is None:
            groups.setdefault((False, loc), []).append((loc, error))
        else:
            groups.setdefault((True, loc[:k]), []).append((loc[:k] + loc[k + 1:], error))
    kept = []
    for (union, _), members in groups.items():
        telling = [(loc, e) for loc, e in members if not (e["type"].endswith(("_type", "_parsing")) or e["type"] in WRONG_KIND)]
        kept += (telling or [max(members, key=lambda m: len(m[0]))]) if union else members
    return kept


def _hints(func: Callable) -> dict[str, Any]:
    """Each parameter's annotation; one that only exists for type checkers counts as Any."""
    module = sys.modules.get(getattr(func, "__module__", ""), None)
    namespace = vars(module) if module else {}
    hints = {}
    for name, annotation in inspect.get_annotations(func).items():
        try:
            # Our own source's annotations, never data.
            hints[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation
        except NameError:
            hints[name] = Any
    return hints


_SCHEMAS: dict[tuple, type[pydantic.BaseModel]] = {}


def _parameters(target: Callable) -> tuple[dict[str, tuple[inspect.Parameter, Any]], bool]:
    """`target`'s keyword parameters with their types, and whether it takes any other keyword. A class whose
    __init__ hands `**kwargs` to its base's (Lightning's MLFlowLogger under ours) takes the base's too, and no
    other: checked there, a misspelt key is named before the run rather than a TypeError once it has opened."""
    params: dict[str, tuple[inspect.Parameter, Any]] = {}
    for func in [c.__init__ for c in target.__mro__ if "__init__" in vars(c)] if isinstance(target, type) else [target]:
        if func is object.__init__:   # a class without an __init__ of its own takes nothing
            return params, False
        hints, signature = _hints(func), inspect.signature(func).parameters
        for name, param in signature.items():
            if name != "self" and name not in params and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                params[name] = (param, hints.get(name, Any))
        if not any(p.kind == p.VAR_KEYWORD for p in signature.values()):
            return params, False
    return params, True   # a function taking **kwargs


def signature_schema(target: Callable, *, strict: bool, skip: Collection[str] = (),
                     all_optional: bool = False) -> type[pydantic.BaseModel]:
    """A pydantic model of `target`'s (a class: its __init__'s) parameters, minus `skip` (the ones its
    caller passes itself). Unknown keys fail unless the signature takes **kwargs."""
    key = (target, strict, tuple(sorted(skip)), all_optional)
    if key not in _SCHEMAS:
        params, takes_any = _parameters(target)
        fields = {}
        for name, (param, hint) in params.items():
            if name in skip:
                continue
            empty = param.default is inspect.Parameter.empty
            fields[name] = (hint, None if all_optional and empty else ... if empty else param.default)
        extra = "allow" if takes_any else "forbid"
        config = pydantic.ConfigDict(extra=extra, strict=strict, arbitrary_types_allowed=not strict)
        with warnings.catch_warnings():   # a parameter may share a name with a BaseModel attribute (`register`):
            warnings.filterwarnings("ignore", "Field name .* shadows an attribute", UserWarning)   # fields win
            _SCHEMAS[key] = pydantic.create_model(f"{target.__name__}Fields", __config__=config, **fields)
    return _SCHEMAS[key]


def check_fields(target: Callable, fields: dict[str, Any], where: str) -> dict[str, Any]:
    """`fields` converted to `target`'s parameter types ("5" -> 5 for an int); ValueError naming every
    key that `target` does not take, or takes with another type."""
    try:
        validated = signature_schema(target, strict=False, all_optional=True).model_validate(fields)
    except pydantic.ValidationError as err:
        raise ValueError(describe(err, where)) from None
    return {name: getattr(validated, name) for name in fields}


def switches(target: Callable) -> set[str]:
    """`target`'s bool parameters: on the command line `--name` / `--no-name` set them."""
    hints = _hints(target.__init__ if isinstance(target, type) else target)
    return {name for name, hint in hints.items() if hint is bool}


def text_parameters(target: Callable) -> set[str]:
    """`target`'s parameters that take text and no number or boolean (`str`, optional or not)."""
    hints = _hints(target.__init__ if isinstance(target, type) else target)
    return {name for name, hint in hints.items()
            if hint is str or (str in typing.get_args(hint) and not {int, float, bool} & set(typing.get_args(hint)))}


def text_as_typed(overrides: Sequence[str], values: Mapping[str, Any], text_keys: Collection[str]) -> dict[str, str]:
    """Hydra reads `api_key=0123456` as the number 123456 (its leading zero gone) and `output=2024` as 2024: a key
    that takes text (`text_keys`, dotted) gets the text as typed on the command line."""
    kept = {}
    for override in overrides:
        key, _, text = override.partition("=")
        key = key.lstrip("+")   # +key= adds, ++key= adds or sets
        if key in text_keys and isinstance(values.get(key), int | float | bool) and "${" not in text:   # not resolved
            kept[key] = text
    return kept


def list_parameters(target: Callable) -> set[str]:
    """`target`'s list parameters (`list[...]`, optional or not): `--name a b c` fills one."""
    hints = _hints(target.__init__ if isinstance(target, type) else target)
    return {name for name, hint in hints.items()
            if typing.get_origin(hint) is list or any(typing.get_origin(h) is list for h in typing.get_args(hint))}


def typed(target: Callable) -> Callable:
    """Decorator for a class or function: every call, from a config or from code, checks its arguments
    against the annotations (the same check `validate_config` runs on a composed config)."""
    function = target.__init__ if isinstance(target, type) else target
    skip = 1 if isinstance(target, type) else 0   # self
    signature = inspect.signature(function)

    @functools.wraps(function)
    def checked(*args: Any, **kwargs: Any) -> Any:
        arguments = signature.bind(*args, **kwargs).arguments
        check_fields(target, dict(list(arguments.items())[skip:]), target.__name__)
        return function(*args, **kwargs)

    if isinstance(target, type):
        target.__init__ = checked
        return target
    return checked
