"""A read-only sequence of floats computed per index when read (the controller's sizing series).

Pure Python: no grpc, no numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload


class LazyFloats(Sequence[float]):
    """Subclasses give ``__len__`` and ``_at(i)`` for ``0 <= i < len``; indexing (negative
    indices and slices included) is done here, once."""

    def _at(self, i: int) -> float:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> float: ...

    @overload
    def __getitem__(self, index: slice) -> list[float]: ...

    def __getitem__(self, index: int | slice) -> float | list[float]:
        if isinstance(index, slice):
            return [self._at(i) for i in range(*index.indices(len(self)))]
        n = len(self)
        i = index + n if index < 0 else index
        if not 0 <= i < n:
            raise IndexError(index)
        return self._at(i)
