"""``run_in_executor()`` checks the arguments it passes on against the function, as
``loop.run_in_executor`` does."""

from typing_extensions import reveal_type

import obskit


def fetch(url: str, timeout: float) -> bytes:
    return url.encode()


async def main() -> None:
    body = await obskit.run_in_executor(None, fetch, "https://example.com", 2.0)
    reveal_type(body)  # revealed: bytes
    await obskit.run_in_executor(None, fetch, 42, 2.0)  # mypy: arg-type
    await obskit.run_in_executor(None, fetch, "https://example.com")  # mypy: arg-type
