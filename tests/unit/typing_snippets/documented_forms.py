"""The argument forms docs/metrics.md and docs/use.md show: exception types as a type, a tuple
or a list (any iterable); allow-lists as any collection of strings or a pattern."""

import re

import obskit
from obskit import LabelRule

bank_errors = [TimeoutError, ConnectionError]


@obskit.red(errors=[TimeoutError, ConnectionError])
def call_bank() -> None: ...


@obskit.red(errors=bank_errors)
def call_bank_again() -> None: ...


@obskit.red(errors=(TimeoutError,))
def call_shop() -> None: ...


@obskit.red(errors=lambda exc: getattr(exc, "status", 500) >= 500)
def call_api() -> None: ...


@obskit.red(errors="TimeoutError")  # mypy: arg-type
def call_wrongly() -> None: ...


pool = obskit.use("db", 4, errors=[ConnectionError], timeouts=[TimeoutError])
queue = obskit.use("queue", 4, errors=ConnectionError, timeouts={TimeoutError, OSError})
obskit.use("cache", 4, errors=[ConnectionError, "timeout"])  # mypy: list-item

rules = [
    LabelRule(allow=["card", "paypal"]),
    LabelRule(allow={"card", "paypal"}, max_length=16),
    LabelRule(allow=r"[A-Z]{2}"),
    LabelRule(allow=re.compile(r"[A-Z]{2}"), max_length=2),
    LabelRule(),
]
LabelRule(allow=42)  # mypy: arg-type
