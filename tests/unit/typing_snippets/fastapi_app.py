"""``instrument()`` returns the application typed as its own class, not as a ``Starlette``."""

from fastapi import FastAPI
from starlette.applications import Starlette
from typing_extensions import reveal_type

from obskit.fastapi import instrument

app = instrument(FastAPI(), service_name="checkout")
reveal_type(app)  # revealed: fastapi.applications.FastAPI


@app.get("/items/{item_id}")
async def item(item_id: int) -> dict[str, int]:
    return {"id": item_id}


reveal_type(instrument(Starlette()))  # revealed: starlette.applications.Starlette
instrument(object())  # mypy: type-var
