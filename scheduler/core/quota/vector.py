"""Per-priority vectors of float32 values: balances, charge rates and running costs.

Upstream keeps these as five float32s and does all arithmetic in float32. Each operation
here is done on Python floats and rounded to float32 at once; for +, - and * of float32
operands that gives exactly the float32 result, because a double holds more than twice a
float32's precision (no double-rounding error).
"""

from __future__ import annotations

import struct

from mesh.schema import FREE_BUCKET as FREE_BUCKET
from mesh.schema import NUM_PRIORITIES as NUM_PRIORITIES

Vector = tuple[float, float, float, float, float]
ZERO: Vector = (0.0, 0.0, 0.0, 0.0, 0.0)

_FLOAT32 = struct.Struct("f")


def f32(x: float) -> float:
    """`x` rounded to the nearest float32 (overflow gives an infinity)."""
    value: float = _FLOAT32.unpack(_FLOAT32.pack(x))[0]
    return value


def vector(values: list[float] | tuple[float, ...] = ()) -> Vector:
    """A vector from up to five values, zero-padded, each rounded to float32."""
    if len(values) > NUM_PRIORITIES:
        raise ValueError(f"at most {NUM_PRIORITIES} priorities, got {len(values)} values")
    padded = [f32(v) for v in values] + [0.0] * (NUM_PRIORITIES - len(values))
    return (padded[0], padded[1], padded[2], padded[3], padded[4])


def add(a: Vector, b: Vector) -> Vector:
    return (f32(a[0] + b[0]), f32(a[1] + b[1]), f32(a[2] + b[2]), f32(a[3] + b[3]),
            f32(a[4] + b[4]))


def sub(a: Vector, b: Vector) -> Vector:
    return (f32(a[0] - b[0]), f32(a[1] - b[1]), f32(a[2] - b[2]), f32(a[3] - b[3]),
            f32(a[4] - b[4]))


def plus_at(a: Vector, priority: int, amount: float) -> Vector:
    """`a` with `amount` added at one priority."""
    values = list(a)
    values[priority] = f32(values[priority] + amount)
    return (values[0], values[1], values[2], values[3], values[4])


def less(a: Vector, b: Vector) -> bool:
    """Lexicographic in priority order: the first differing level decides (tuple order)."""
    return a < b


def best_priority(balance: Vector) -> int:
    """The highest priority (lowest index) with a strictly positive balance, else free."""
    for priority, value in enumerate(balance):
        if value > 0:
            return priority
    return FREE_BUCKET
