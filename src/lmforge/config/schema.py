"""The machinery behind every config section: documented, ranged, typed fields.

A section is a dataclass deriving from :class:`Section`; each field is declared with
:func:`setting`, which carries the field's one documentation text and its allowed range. That text
is what ``lmforge <step> --help`` and ``docs/params.md`` show, and the range is checked when the
section is built (``__post_init__``), together with the section's own cross-field rules
(:meth:`Section.check`). So a section is documented and checked where it is defined.

Loading (``_build``) checks every key and the type of every value against the annotations, so a
typo, a YAML date or a list where a number belongs is one line naming the key and the fix.
Only the standard library is imported here: the CLI loads the config on every call.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

from lmforge.errors import ConfigError

_DOC, _RANGE = "lmforge.doc", "lmforge.range"


def setting(
    default: Any = dataclasses.MISSING,
    doc: str = "",
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A documented field; lists and dicts get a fresh copy per instance.

    ``ge``/``gt``/``le``/``lt`` bound a number (``None`` values of optional fields pass).
    """
    if not doc:
        raise TypeError("every setting needs its documentation text")
    bounds = {k: v for k, v in {"ge": ge, "gt": gt, "le": le, "lt": lt}.items() if v is not None}
    meta = {_DOC: doc, _RANGE: bounds}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_RELATION = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def range_text(bounds: dict[str, float]) -> str:
    """``{"gt": 0, "le": 1}`` -> ``> 0 and <= 1``."""
    return " and ".join(f"{_RELATION[k]} {v:g}" for k, v in bounds.items())


def _in_range(value: float, bounds: dict[str, float]) -> bool:
    checks = {
        "ge": lambda b: value >= b,
        "gt": lambda b: value > b,
        "le": lambda b: value <= b,
        "lt": lambda b: value < b,
    }
    return all(checks[k](b) for k, b in bounds.items())


class Section:
    """Base of every config section: ranges and cross-field rules are checked on creation."""

    #: The section's key in params.yaml (``pretrain``); set by each concrete section.
    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            bounds = f.metadata.get(_RANGE)
            value = getattr(self, f.name)
            if not bounds or value is None or isinstance(value, bool):
                continue
            if not isinstance(value, int | float) or math.isnan(value):
                continue  # a wrong type is the loader's error, with its own message
            if not _in_range(value, bounds):
                allowed = range_text(bounds)
                raise ConfigError(
                    f"{self.name}.{f.name}: {value!r} is out of range; allowed: {allowed}"
                )
        self.check()

    def check(self) -> None:
        """Cross-field rules of this section; raise ``ConfigError`` naming the keys."""

    def fail(self, key: str, message: str) -> typing.NoReturn:
        """Raise the one-line error of a cross-field rule on ``key``."""
        raise ConfigError(f"{self.name}.{key}: {message}")


def section_class(name: str) -> type[Section] | None:
    """The section class keyed ``name`` in params.yaml, or None. Found among the subclasses of
    ``Section`` rather than in the root ``Config``, which imports every section (a section that
    checks keys of other sections, like ``sweep``, would otherwise import its own importer).
    Importing any module of ``lmforge.config`` imports the package, and so every section, first.
    """
    todo = list(Section.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls.name == name:
            return cls
        todo += cls.__subclasses__()
    return None


@dataclasses.dataclass(frozen=True)
class FieldDoc:
    key: str  # section.key
    type: str
    default: Any
    doc: str
    range: str


def type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is list:
        return f"list[{type_name(args[0])}]" if args else "list"
    if origin is dict:
        return f"dict[{type_name(args[0])}, {type_name(args[1])}]" if args else "dict"
    return str(tp).replace("typing.", "")


def field_docs(cls: type, prefix: str = "", defaults: Any = None) -> Iterator[FieldDoc]:
    """Every field of a section with its type, default, documentation and range; a field that
    is itself a section (``multimodal.align``) is listed key by key under its own prefix.
    ``defaults``: the section as a run gets it with nothing set (the model preset applied);
    the class's own field defaults when omitted."""
    hints = typing.get_type_hints(cls)
    defaults = cls() if defaults is None else defaults
    prefix = prefix or cls.name
    for f in dataclasses.fields(cls):
        if isinstance(hints[f.name], type) and issubclass(hints[f.name], Section):
            yield from field_docs(hints[f.name], f"{prefix}.{f.name}", getattr(defaults, f.name))
            continue
        yield FieldDoc(
            key=f"{prefix}.{f.name}",
            type=type_name(hints[f.name]),
            default=getattr(defaults, f.name),
            doc=f.metadata.get(_DOC, ""),
            range=range_text(f.metadata.get(_RANGE) or {}),
        )


# --------------------------------------------------------------------------------------------
# Typed loading of plain YAML values
# --------------------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    """What YAML made of a value, for an error message (``a date``, ``a list``)."""
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "a mapping", type(None): "null"})
    for tp, name in names.items():
        if type(value) is tp:
            return name
    return f"a {type(value).__name__} (quote it in YAML to make it a string)"


def _mismatch(where: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(f"{where}: expected {type_name(tp)}, got {_kind(value)}: {value!r}")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to floats)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ConfigError:
                continue
        raise _mismatch(where, tp, value)
    if origin is Literal:
        if value in args and type(value) is type(next(a for a in args if a == value)):
            return value
        choices = ", ".join(repr(a) for a in args)
        raise ConfigError(f"{where}: expected one of {choices}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise _mismatch(where, tp, value)
        (item_tp,) = args or (Any,)
        return [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _mismatch(where, tp, value)
        key_tp, val_tp = args or (Any, Any)
        return {
            coerce(k, key_tp, where): coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()
        }
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and math.isnan(value):
            raise ConfigError(f"{where}: expected a number, got NaN")
        return float(value)
    if tp in (bool, int, str) and type(value) is tp:
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    raise _mismatch(where, tp, value)


def build(cls: type, values: Any, where: str) -> Any:
    """``cls(**values)`` with every key and value checked; errors name ``where.key``."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {_kind(values)}: {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names), key=str)
    if unknown:
        valid = ", ".join(sorted(names))
        raise ConfigError(f"{where}.{unknown[0]}: unknown key; valid keys of {where} are: {valid}")
    kwargs = {k: coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    return cls(**kwargs)
