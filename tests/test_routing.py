"""Router: static and parameter routes, 404, 405 with Allow, HEAD from GET, sync routes."""

from __future__ import annotations

import threading

import pytest

from tinystream import HTTPError, JSONResponse, Request, Response, Router
from tinystream.testing import serve_for_test


def make_router() -> Router:
    router = Router()

    @router.get("/items/{item_id}")
    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["item_id"]})

    @router.post("/items")
    async def create(request: Request) -> Response:
        return Response(await request.body(), status=201)

    @router.get("/files/{rest:path}")
    async def files(request: Request) -> Response:
        return Response(request.path_params["rest"])

    def sync_route(request: Request) -> Response:
        return Response(threading.current_thread().name)

    router.add("/sync", sync_route, methods=("GET", "PUT"))
    return router


async def test_routes_dispatch_with_parameters() -> None:
    async with serve_for_test(make_router()) as client:
        assert (await client.get("/items/42")).json() == {"id": "42"}
        assert (await client.get("/items/a%20b")).json() == {"id": "a b"}
        created = await client.post("/items", body=b"new")
        assert created.status == 201 and created.body == b"new"
        assert (await client.get("/files/a/b/c.txt")).body == b"a/b/c.txt"


async def test_unknown_path_is_404_and_wrong_method_is_405_with_allow() -> None:
    async with serve_for_test(make_router()) as client:
        assert (await client.get("/nowhere")).status == 404
        assert (await client.get("/items/1/extra")).status == 404
        wrong = await client.request("DELETE", "/items/1")
        assert wrong.status == 405
        assert wrong.headers["allow"] == "GET, HEAD"


async def test_get_route_answers_head_without_a_body() -> None:
    async with serve_for_test(make_router()) as client:
        response = await client.request("HEAD", "/items/7")
        assert response.status == 200 and response.body == b""
        assert response.headers["content-length"] == str(len(b'{"id":"7"}'))


async def test_sync_route_runs_in_a_worker_thread() -> None:
    async with serve_for_test(make_router()) as client:
        assert (await client.get("/sync")).body.startswith(b"tinystream-worker")
        assert (await client.request("PUT", "/sync")).status == 200


async def test_http_error_from_a_route() -> None:
    router = Router()

    @router.get("/private")
    async def private(request: Request) -> Response:
        raise HTTPError(403, "members only")

    async with serve_for_test(router) as client:
        response = await client.get("/private")
        assert response.status == 403 and response.body == b"members only\n"


def test_route_definition_errors() -> None:
    router = Router()
    router.add("/a", lambda r: Response(), methods=("GET",))
    with pytest.raises(ValueError, match="already routed"):
        router.add("/a", lambda r: Response(), methods=("GET",))
    with pytest.raises(ValueError, match="must start with '/'"):
        router.add("relative", lambda r: Response())
    with pytest.raises(ValueError, match="twice"):
        router.add("/{x}/{x}", lambda r: Response())
    with pytest.raises(ValueError, match="at least one method"):
        router.add("/b", lambda r: Response(), methods=())
    with pytest.raises(TypeError, match="callable"):
        router.add("/c", "not a handler")  # type: ignore[arg-type]
    # An explicit HEAD replaces the implicit one a GET route gave.
    router.add("/a", lambda r: Response("head"), methods=("HEAD",))
