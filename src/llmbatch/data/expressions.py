"""Predicates for ``filter(expr=...)``: pyarrow expressions, Ray Data's, or Python text."""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import Any

import pyarrow.compute as pc

_COMPARISONS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_ARITHMETIC: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: lambda a, b: pc.subtract(a, pc.multiply(pc.floor(pc.divide(a, b)), b)),
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
}


def as_expression(expr: Any) -> pc.Expression:
    """``expr`` as a pyarrow expression: one already, Ray Data's (``col("x") > 1``), or text
    in Python's syntax over column names (``"x > 1 and name in ('a', 'b')"``)."""
    if isinstance(expr, pc.Expression):
        return expr
    if hasattr(expr, "to_pyarrow"):
        return expr.to_pyarrow()
    if not isinstance(expr, str):
        raise TypeError(
            f"expr must be a pyarrow.compute.Expression, a ray.data expression or text, got "
            f"{type(expr).__name__}"
        )
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as error:
        raise ValueError(f"expr {expr!r} is not a Python expression: {error.msg}") from None
    return _Translator(expr).visit(tree.body)


class _Translator(ast.NodeVisitor):
    """Python syntax to pyarrow expressions: names are columns, and/or/not, comparisons (chained
    too), arithmetic, ``in`` / ``not in`` a literal list, ``is None`` / ``is not None``."""

    def __init__(self, text: str) -> None:
        self._text = text

    def generic_visit(self, node: ast.AST) -> Any:
        raise ValueError(
            f"expr {self._text!r}: {ast.unparse(node)!r} is not supported; use column names, "
            "literals, comparisons, arithmetic, and/or/not, in, is None"
        )

    def visit_Name(self, node: ast.Name) -> pc.Expression:
        return pc.field(node.id)

    def visit_Constant(self, node: ast.Constant) -> Any:
        return node.value

    def visit_BoolOp(self, node: ast.BoolOp) -> pc.Expression:
        combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
        values = [self._expression(value) for value in node.values]
        result = values[0]
        for value in values[1:]:
            result = combine(result, value)
        return result

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        operand = self.visit(node.operand)
        if isinstance(node.op, ast.Not | ast.Invert):
            return ~self._as_expression(operand)
        if isinstance(node.op, ast.USub):
            return -operand if not isinstance(operand, pc.Expression) else pc.negate(operand)
        return self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> pc.Expression:
        apply = _ARITHMETIC.get(type(node.op))
        if apply is None:
            return self.generic_visit(node)
        return apply(self._as_expression(self.visit(node.left)), self.visit(node.right))

    def visit_Compare(self, node: ast.Compare) -> pc.Expression:
        parts = []
        left = self.visit(node.left)
        for op, comparator in zip(node.ops, node.comparators):
            right = self.visit(comparator)
            parts.append(self._compare(op, left, right))
            left = right
        result = parts[0]
        for part in parts[1:]:
            result = result & part
        return result

    def _compare(self, op: ast.cmpop, left: Any, right: Any) -> pc.Expression:
        if isinstance(op, ast.In | ast.NotIn):
            if not isinstance(right, list | tuple | set):
                raise ValueError(f"expr {self._text!r}: 'in' needs a literal list or tuple")
            member = self._as_expression(left).isin(list(right))
            return member if isinstance(op, ast.In) else ~member
        if isinstance(op, ast.Is | ast.IsNot) and right is None:
            null = self._as_expression(left).is_null()
            return null if isinstance(op, ast.Is) else ~null
        compare = _COMPARISONS.get(type(op))
        if compare is None:
            raise ValueError(f"expr {self._text!r}: comparison {type(op).__name__} unsupported")
        if not isinstance(left, pc.Expression):
            left = pc.scalar(left)
        return compare(left, right)

    def visit_List(self, node: ast.List) -> list[Any]:
        return [self.visit(item) for item in node.elts]

    visit_Tuple = visit_List  # noqa: N815

    def visit_Set(self, node: ast.Set) -> list[Any]:
        return [self.visit(item) for item in node.elts]

    def _expression(self, node: ast.AST) -> pc.Expression:
        return self._as_expression(self.visit(node))

    @staticmethod
    def _as_expression(value: Any) -> pc.Expression:
        return value if isinstance(value, pc.Expression) else pc.scalar(value)
