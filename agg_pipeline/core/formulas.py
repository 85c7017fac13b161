"""Derived metrics: small, safe formulas over a device's hourly rollup, compiled to SQL.

A formula is an arithmetic expression. It is parsed with Python's own parser into a syntax
tree and only these nodes are accepted - nothing is ever evaluated as code:

- numbers: ``100``, ``0.6108``;
- references ``<field>.<stat>`` to the device's hourly rollup of a catalogue field, with
  ``stat`` one of ``avg min max count stddev median``;
- ``+ - * /`` and parentheses; unary minus;
- functions: ``min(a, b, ...)``, ``max(a, b, ...)``, ``abs(x)``, ``clamp(x, lo, hi)``,
  ``exp(x)``, ``ln(x)``, ``sqrt(x)``, and ``anomalies(<field>, z)``: the number of the hour's
  1-minute windows whose mean lies more than ``z`` sample standard deviations from the
  hour's mean (anomalies at 1-minute resolution).

Division by zero, ``ln`` of a non-positive and ``sqrt`` of a negative number give NULL (no
value for that hour), never an error. Any reference to a missing rollup gives NULL.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field

STATS = {
    "avg": "avg_value",
    "min": "min_value",
    "max": "max_value",
    "count": "sample_count",
    "stddev": "stddev_value",
    "median": "median_value",
}
FUNCTIONS = {"min", "max", "abs", "clamp", "exp", "ln", "sqrt", "anomalies"}


class FormulaError(ValueError):
    pass


@dataclass
class Compiled:
    """SQL text of a formula plus what it needs from the pivoted hourly rows."""

    sql: str
    references: set[tuple[str, str]] = field(default_factory=set)  # (field, stat)
    anomalies: set[tuple[str, float]] = field(default_factory=set)  # (field, z)


def reference_column(field_name: str, stat: str, index: dict[str, int]) -> str:
    return f"f{index[field_name]}_{stat}"


def anomaly_column(field_name: str, z: float, index: dict[str, int]) -> str:
    return f"a{index[field_name]}_{str(z).replace('.', '_').replace('-', 'm')}"


def _number(node: ast.AST) -> float | None:
    """The value of a numeric literal (with an optional sign), else None."""
    sign = 1.0
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        sign = -1.0 if isinstance(node.op, ast.USub) else 1.0
        node = node.operand
    value = node.value if isinstance(node, ast.Constant) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return sign * float(value)
    return None


def parse(formula: str, fields: list[str]) -> ast.Expression:
    """Parse and validate; raises FormulaError naming what is wrong."""
    try:
        tree = ast.parse(formula, mode="eval")
    except SyntaxError as exc:
        raise FormulaError(f"not a valid expression: {exc.msg}") from None
    known = set(fields)

    def check(node: ast.AST) -> None:
        if isinstance(node, ast.Expression):
            check(node.body)
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise FormulaError(f"only numbers are allowed as constants, not {node.value!r}")
            if not math.isfinite(node.value):
                raise FormulaError("constants must be finite")
        elif isinstance(node, ast.BinOp):
            if not isinstance(node.op, ast.Add | ast.Sub | ast.Mult | ast.Div):
                raise FormulaError(f"operator {type(node.op).__name__} is not allowed")
            check(node.left)
            check(node.right)
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.USub | ast.UAdd):
                raise FormulaError(f"operator {type(node.op).__name__} is not allowed")
            check(node.operand)
        elif isinstance(node, ast.Attribute):
            if not isinstance(node.value, ast.Name):
                raise FormulaError("references look like <field>.<stat>")
            if node.value.id not in known:
                raise FormulaError(f"unknown field {node.value.id!r}")
            if node.attr not in STATS:
                raise FormulaError(f"unknown statistic {node.attr!r} (one of {', '.join(STATS)})")
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                # Name what was called (``__import__('os').system``), not just "?".
                name = ast.unparse(node.func)
                raise FormulaError(
                    f"unknown function {name!r} (one of {', '.join(sorted(FUNCTIONS))})"
                )
            if node.keywords:
                raise FormulaError("keyword arguments are not allowed")
            name, args = node.func.id, node.args
            arity = {"abs": 1, "exp": 1, "ln": 1, "sqrt": 1, "clamp": 3, "anomalies": 2}
            if name in arity and len(args) != arity[name]:
                raise FormulaError(f"{name}() takes {arity[name]} arguments")
            if name in ("min", "max") and len(args) < 2:
                raise FormulaError(f"{name}() takes at least 2 arguments")
            if name == "anomalies":
                if not isinstance(args[0], ast.Name) or args[0].id not in known:
                    raise FormulaError("anomalies() takes a field name first")
                z = _number(args[1])
                if z is None:
                    raise FormulaError("anomalies() takes a number (z) second")
                if z <= 0:
                    raise FormulaError("anomalies() needs z > 0")
                return
            for arg in args:
                check(arg)
        elif isinstance(node, ast.Name):
            raise FormulaError(f"{node.id!r} alone is not a value: use {node.id}.avg etc.")
        else:
            raise FormulaError(f"{type(node).__name__} is not allowed in a formula")

    check(tree)
    return tree


def compile_sql(formula: str, fields: list[str]) -> Compiled:
    """SQL expression over columns named by ``reference_column`` / ``anomaly_column``."""
    tree = parse(formula, fields)
    index = {name: i for i, name in enumerate(fields)}
    out = Compiled(sql="")

    def sql(node: ast.AST) -> str:
        if isinstance(node, ast.Expression):
            return sql(node.body)
        if isinstance(node, ast.Constant):
            return f"({float(node.value)!r}::float8)"
        if isinstance(node, ast.BinOp):
            left, right = sql(node.left), sql(node.right)
            if isinstance(node.op, ast.Div):
                return f"({left} / NULLIF({right}, 0))"
            op = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}[type(node.op)]
            return f"({left} {op} {right})"
        if isinstance(node, ast.UnaryOp):
            return f"(-{sql(node.operand)})" if isinstance(node.op, ast.USub) else sql(node.operand)
        if isinstance(node, ast.Attribute):
            out.references.add((node.value.id, node.attr))
            return reference_column(node.value.id, node.attr, index)
        if isinstance(node, ast.Call):
            name, args = node.func.id, node.args
            if name == "anomalies":
                z = _number(args[1])
                out.anomalies.add((args[0].id, z))
                out.references.add((args[0].id, "avg"))
                return f"({anomaly_column(args[0].id, z, index)})::float8"
            a = [sql(x) for x in args]
            # LEAST/GREATEST skip NULLs; a formula's missing input must stay missing.
            any_null = " OR ".join(f"{x} IS NULL" for x in a)
            if name == "min":
                return f"(CASE WHEN {any_null} THEN NULL ELSE LEAST({', '.join(a)}) END)"
            if name == "max":
                return f"(CASE WHEN {any_null} THEN NULL ELSE GREATEST({', '.join(a)}) END)"
            if name == "abs":
                return f"abs({a[0]})"
            if name == "clamp":
                return (
                    f"(CASE WHEN {any_null} THEN NULL "
                    f"ELSE LEAST(GREATEST({a[0]}, {a[1]}), {a[2]}) END)"
                )
            if name == "exp":
                # exp() overflows float8 above ~709: no value rather than an error.
                return f"(CASE WHEN {a[0]} < 700 THEN exp({a[0]}) END)"
            if name == "ln":
                return f"(CASE WHEN {a[0]} > 0 THEN ln({a[0]}) END)"
            if name == "sqrt":
                return f"(CASE WHEN {a[0]} >= 0 THEN sqrt({a[0]}) END)"
        raise FormulaError(f"cannot compile {ast.dump(node)}")  # pragma: no cover

    out.sql = sql(tree)
    return out
