"""The API's own documentation (``/docs``), drawn by Swagger UI from the API's files: FastAPI's default page
loads its script from a CDN, on the origin whose session cookie the pages use."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from web.pages import STATIC, render

router = APIRouter(include_in_schema=False)


@router.get("/docs", response_class=HTMLResponse)
def api_docs(request: Request) -> HTMLResponse:
    ready = (STATIC / "vendor" / "swagger-ui-bundle.js").is_file()
    return render(request, "api_docs.html", {"swagger_ready": ready, "openapi_url": request.app.openapi_url})
