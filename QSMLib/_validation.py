"""Checking a stage method's user parameters against its signature, docstring and known ranges.

A configuration value must have a type that the method's annotation
allows (``float``, ``int``, ``bool``, ``str``, ``None``, sequences of them,
unions such as ``Union[float, str, None]``: a method that takes
``regularization="auto"`` keeps taking it), a string must be one the
docstring lists when it lists any (numpydoc ``initial : {"zero", "l2"}``
or ``regularization : float or "auto"``), and a number must be finite and
inside the range its name implies (:data:`PARAMETER_RANGES`, then
:data:`SUFFIX_RANGES`: iteration counts at least 1, tolerances above 0,
lengths in mm not negative...). JSON ``true`` is not a number and ``"false"``
is not a boolean.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .acquisition import ECHO_TIME_RANGE_S


@dataclass(frozen=True)
class Bounds:
    """Allowed interval of a numeric parameter (``None``: unbounded; ``open``: the end is excluded)."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return (f"{'above' if self.low_open else 'at least'} {self.low:g} and "
                    f"{'below' if self.high_open else 'at most'} {self.high:g}")
        if self.low is not None:
            return "above 0" if (self.low == 0 and self.low_open) else (
                f"{'above' if self.low_open else 'at least'} {self.low:g}")
        if self.high is not None:
            return f"{'below' if self.high_open else 'at most'} {self.high:g}"
        return "finite"


_POSITIVE = Bounds(0.0, low_open=True)
_NOT_NEGATIVE = Bounds(0.0)
_FRACTION = Bounds(0.0, 1.0, low_open=True)
_UNIT_INTERVAL = Bounds(0.0, 1.0)

#: Allowed range of numeric parameters by name; a name means the same thing in every method.
PARAMETER_RANGES: dict[str, Bounds] = {
    "pad_factor": Bounds(1.0),
    "threshold": _FRACTION,  # TKD: |D| below which the kernel is truncated
    "delta": _FRACTION,  # RTS: |D| above which a frequency is well conditioned
    "truncation": Bounds(0.0, 1.0, low_open=True, high_open=True),
    "quality_threshold": _UNIT_INTERVAL,
    "threshold_scale": _POSITIVE,
    "residual_threshold_rad": _POSITIVE,
    "jump_fraction": _POSITIVE,
    "edge_fraction": _UNIT_INTERVAL,
    "stall_ratio": Bounds(0.0, 1.0, low_open=True, high_open=True),
    "relaxation": Bounds(0.0, 2.0, low_open=True, high_open=True),  # ADMM over-relaxation (TFI, SS-TV)
    "r2star_fraction": _FRACTION,
    "regularization": _POSITIVE,
    "csf_regularization": _NOT_NEGATIVE,
    "penalty": _POSITIVE,
    "data_penalty": _POSITIVE,
    "penalty_growth": Bounds(1.0),
    "outside_weight": _NOT_NEGATIVE,
    "noise_floor_snr": _NOT_NEGATIVE,
    "max_r2star_per_s": _POSITIVE,
    "polynomial_order": Bounds(1.0),
    "readout_axis": Bounds(0.0, 2.0),
    "template_echo": _NOT_NEGATIVE,
    "offset_echoes": _NOT_NEGATIVE,
    "smoothing_steps": Bounds(1.0),
    "reference_label": _NOT_NEGATIVE,
    "csf_label": _NOT_NEGATIVE,
    "sigma_mm": _POSITIVE,
    "estimation_voxel_mm": _POSITIVE,
    "max_radius_mm": _POSITIVE,
    "radius_mm": _POSITIVE,
    "radii_mm": _POSITIVE,
    "echo_time_s": Bounds(*ECHO_TIME_RANGE_S),
}
#: Ranges by the end of a name, for parameters not in :data:`PARAMETER_RANGES` (first match wins).
SUFFIX_RANGES: tuple[tuple[str, Bounds], ...] = (
    ("iterations", Bounds(1.0)),
    ("tolerance", _POSITIVE),
    ("tolerance_hz", _POSITIVE),
    ("_mm", _NOT_NEGATIVE),
    ("_s", _POSITIVE),
)

_KIND_TEXT = {"none": "null", "bool": "true or false", "int": "a whole number", "float": "a number",
              "str": "a string"}


def parameter_bounds(name: str) -> Bounds:
    """The allowed range of a numeric parameter called ``name`` (unbounded but finite when unknown)."""
    if name in PARAMETER_RANGES:
        return PARAMETER_RANGES[name]
    if name.startswith("tolerance"):
        return _POSITIVE
    return next((bounds for suffix, bounds in SUFFIX_RANGES if name.endswith(suffix)), Bounds())


def annotation_kinds(annotation: Any) -> frozenset:
    """What an annotation allows: ``"none"``, ``"bool"``, ``"int"``, ``"float"``, ``"str"``,
    ``("sequence", kinds)`` or ``"any"`` (anything not understood is not type-checked).

    Works on annotation strings (``from __future__ import annotations``) without evaluating them.

    Examples
    --------
    >>> sorted(map(str, annotation_kinds("Union[float, str, None]")))
    ['float', 'none', 'str']
    >>> annotation_kinds("Optional[Sequence[int]]") == {"none", ("sequence", frozenset({"int"}))}
    True
    """
    if annotation is inspect.Parameter.empty:
        return frozenset({"any"})
    if isinstance(annotation, type):
        text = annotation.__name__
    else:
        text = str(annotation).replace("typing.", "")
    return _parse(text.strip().strip("'\""))  # a quoted annotation under postponed evaluation


def _split_top_level(text: str, separator: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for index, character in enumerate(text):
        depth += character == "["
        depth -= character == "]"
        if character == separator and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    return [p.strip() for p in [*parts, text[start:]] if p.strip()]


def _parse(text: str) -> frozenset:
    alternatives = _split_top_level(text, "|")
    if len(alternatives) > 1:
        return frozenset().union(*(_parse(a) for a in alternatives))
    match = re.fullmatch(r"([\w.]+)\[(.*)\]", text)
    if match:
        outer, inner = match.group(1).split(".")[-1], match.group(2)
        arguments = [a for a in _split_top_level(inner, ",") if a != "..."]
        if outer == "Optional":
            return _parse(inner) | {"none"}
        if outer == "Union":
            return frozenset().union(*(_parse(a) for a in arguments))
        if outer in ("Sequence", "list", "List", "tuple", "Tuple", "Iterable"):
            return frozenset({("sequence", frozenset().union(*(_parse(a) for a in arguments)))})
        return frozenset({"any"})
    names = {"float": "float", "int": "int", "bool": "bool", "str": "str", "None": "none", "NoneType": "none"}
    return frozenset({names.get(text, "any")})


def documented_choices(function: Callable[..., Any], name: str) -> tuple[str, ...]:
    """Strings the numpydoc entry of parameter ``name`` lists in its type (``{"zero", "l2"}``, ``or "auto"``)."""
    for line in (inspect.getdoc(function) or "").splitlines():
        names, separator, spec = line.partition(" : ")
        if separator and not line.startswith(" ") and name in [n.strip() for n in names.split(",")]:
            return tuple(re.findall(r"[\"']([^\"']+)[\"']", spec))
    return ()


def _describe(kinds: frozenset, choices: tuple[str, ...]) -> str:
    words = []
    for kind in sorted(kinds, key=str):
        if isinstance(kind, tuple):
            words.append(f"a list of ({_describe(kind[1], ())})")
        elif kind == "str" and choices:
            words.append(" or ".join(f'"{c}"' for c in choices))
        elif not (kind == "int" and "float" in kinds):
            words.append(_KIND_TEXT[kind])
    return " or ".join(words)


def check_parameter(function: Callable[..., Any], name: str, value: Any) -> tuple[Any, Optional[str]]:
    """Check one user parameter of a stage method.

    Parameters
    ----------
    function : callable
        The method (its signature gives the annotation, its docstring the choices).
    name : str
        A keyword-only parameter of it.
    value : Any
        The value from the configuration.

    Returns
    -------
    value : Any
        The value to pass (a whole-number float becomes an int where only
        ints are allowed).
    problem : str or None
        What is allowed, when ``value`` is not.

    Examples
    --------
    >>> def method(field, *, max_iterations: int = 10, regularization: "float | str" = "auto"):
    ...     '''regularization : float or "auto"'''
    >>> check_parameter(method, "max_iterations", 20.0)
    (20, None)
    >>> check_parameter(method, "max_iterations", 0)[1]
    'a whole number at least 1'
    >>> check_parameter(method, "regularization", "high")[1]
    'a number above 0 or "auto"'
    """
    annotation = inspect.signature(function).parameters[name].annotation
    kinds = annotation_kinds(annotation)
    choices = documented_choices(function, name) if "str" in kinds else ()
    checked, ok = _check_kinds(value, kinds, choices, parameter_bounds(name))
    if ok:
        return checked, None
    bounds = parameter_bounds(name)
    allowed = _describe(kinds, choices)
    if bounds.describe() != "finite" and ({"int", "float"} & kinds):
        number = "a whole number" if "float" not in kinds else "a number"
        allowed = allowed.replace(number, f"{number} {bounds.describe()}", 1)
    return value, allowed


def _check_kinds(value: Any, kinds: frozenset, choices: tuple[str, ...], bounds: Bounds) -> tuple[Any, bool]:
    if "any" in kinds:
        return value, True
    if value is None:
        return value, "none" in kinds
    if isinstance(value, bool):
        return value, "bool" in kinds
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or not bounds.contains(value):
            return value, False
        if isinstance(value, int) and ({"int", "float"} & kinds):
            return value, True
        if "float" in kinds:
            return float(value), True
        if "int" in kinds and float(value).is_integer():
            return int(value), True
        return value, False
    if isinstance(value, str):
        return value, "str" in kinds and (value in choices if choices else bool(value.strip()))
    if isinstance(value, (list, tuple)):
        for kind in kinds:
            if isinstance(kind, tuple):
                checked = [_check_kinds(item, kind[1], (), bounds) for item in value]
                if value and all(ok for _, ok in checked):
                    return type(value)(item for item, _ in checked), True
        return value, False
    return value, False
