"""Domain errors raised by the core; the API layer maps them to gRPC statuses."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One invalid input: a field path (as the caller spelled it) and the reason."""

    field: str
    description: str


class InvalidInputError(ValueError):
    """Raised when inputs are invalid; carries every violation found, not only the first."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        self.violations = list(violations)
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))

    def __reduce__(self) -> tuple[type[InvalidInputError], tuple[list[FieldViolation]]]:
        # Raised in a worker process and re-raised in the server: rebuilt from the violations,
        # not from the joined message the default pickling would pass back.
        return (type(self), (self.violations,))
