"""A JSON API: a Router with path and query parameters, and HTTPError for refusals.

What it teaches: :class:`~tinystream.Router` dispatches on path and method
(``/items/{item_id}`` captures one path segment into ``request.path_params``);
``request.query_params`` reads the query string; ``await request.json()`` reads a
JSON body (400 when it is not JSON); ``raise HTTPError(status, detail)`` answers
with that status before any byte of a response exists. Unknown paths get 404, a
known path with another method 405 with an ``Allow`` field - the router's doing.

Run it:   python -m tinystream examples.json_api:app
Then try:
  curl -s http://127.0.0.1:8000/items                          every item
  curl -s 'http://127.0.0.1:8000/items?tag=fruit&limit=1'      filtered, at most one
  curl -s http://127.0.0.1:8000/items/2                        one item (a path parameter)
  curl -si http://127.0.0.1:8000/items/99                      404, with a reason
  curl -si 'http://127.0.0.1:8000/items?limit=x'               400: limit must be a number
  curl -s -d '{"name": "kiwi", "tags": ["fruit"]}' http://127.0.0.1:8000/items
                                                               201 Created, with its id
  curl -si -X DELETE http://127.0.0.1:8000/items               405, Allow: GET, HEAD, POST
"""

from __future__ import annotations

from typing import Any

from tinystream import HTTPError, JSONResponse, Request, Router


def make_app() -> Router:
    """The routes, with their own store (tests make a fresh app each)."""
    items: dict[int, dict[str, Any]] = {
        1: {"id": 1, "name": "apple", "tags": ["fruit"]},
        2: {"id": 2, "name": "leek", "tags": ["vegetable"]},
        3: {"id": 3, "name": "pear", "tags": ["fruit"]},
    }
    app = Router()

    @app.get("/items")
    async def list_items(request: Request) -> JSONResponse:
        tag = request.query_params.get("tag")
        try:
            limit = int(request.query_params.get("limit", "100"))
        except ValueError:
            raise HTTPError(400, "limit must be a number") from None
        found = [item for item in items.values() if tag is None or tag in item["tags"]]
        return JSONResponse(found[:limit])

    @app.get("/items/{item_id}")
    async def get_item(request: Request) -> JSONResponse:
        try:
            item = items[int(request.path_params["item_id"])]
        except (ValueError, KeyError):
            raise HTTPError(404, "no such item") from None
        return JSONResponse(item)

    @app.post("/items")
    async def add_item(request: Request) -> JSONResponse:
        body = await request.json()  # HTTPError(400) if the body is not JSON
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise HTTPError(422, 'expected {"name": str, "tags": [str]}')
        item_id = max(items) + 1
        items[item_id] = {"id": item_id, "name": body["name"], "tags": body.get("tags", [])}
        return JSONResponse(items[item_id], status=201, headers={"Location": f"/items/{item_id}"})

    return app


app = make_app()
