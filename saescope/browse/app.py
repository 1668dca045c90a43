"""The feature browser web app (FastAPI): suite, SAE, latent, search, prompt and steering pages.

Ids in URLs are looked up in the feature database, never turned into file paths; an unknown one
is a 404 page naming what was asked for. Every error reaches the browser as a short escaped
message, never a traceback (the server log keeps those).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from saescope.browse import render
from saescope.browse.db import FeatureDB, db_path
from saescope.browse.live import Live, SteerRequest
from saescope.browse.ondemand import OnDemand
from saescope.errors import SaescopeError

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("saescope.browse")


MAX_BODY = 1 << 20  # bytes of a posted form: a long prompt is a few KB; more is refused before it is read
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
WILDCARDS = {"0.0.0.0", "::", ""}
HEADERS = {  # the pages use one external script and no inline ones; nothing may frame them
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def _hostname(authority: str) -> str:
    """`host` of `host:port` or `[v6]:port`, lower-cased."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1:].split("]", 1)[0]
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


def allowed_hosts(host: str) -> Callable[[str], bool]:
    """Which Host headers the server answers: loopback names, the --host it serves on, and when
    it listens on every interface, this machine's names and any IP address. A page from another
    site that re-points its own DNS name at this server (DNS rebinding) is refused."""
    names = LOOPBACK | {_hostname(host)}
    wildcard = host in WILDCARDS
    if wildcard:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}

    def ok(authority: str) -> bool:
        name = _hostname(authority)
        if name in names:
            return True
        try:
            return wildcard and bool(ipaddress.ip_address(name))
        except ValueError:
            return False

    return ok


def _refusal(request: Request, host_ok: Callable[[str], bool]) -> tuple[int, str] | None:
    """Why a request is refused before it reaches a page (status and message), or None."""
    host = request.headers.get("host", "")
    if not host_ok(host):
        return 421, f"this server does not answer for host '{host}': open it as http://127.0.0.1 or the --host given"
    if request.method == "POST":
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
            return 403, "cross-origin form posts are refused: use the form on this server's own page"
        length = request.headers.get("content-length", "0")
        if not (length.isascii() and length.isdigit()) or int(length) > MAX_BODY:
            return 413, f"the form is larger than {MAX_BODY // 1024} KB: send a shorter text"
    return None


def create_app(run: str | Path, host: str = "127.0.0.1", fill_lens: bool = False) -> FastAPI:
    """The app for one run; `host` is the --host it is served on (for the Host allow-list). With
    `fill_lens` the logit lens of every latent is computed in the background once the server is up."""
    run = Path(run).resolve()
    db = FeatureDB(db_path(run))
    live = Live(run, db)
    ondemand = OnDemand(run, db, live.model)
    links = render.Links()
    host_ok = allowed_hosts(host)
    app = FastAPI(
        title="saescope browser",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        on_startup=[ondemand.start] if fill_lens else [],
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def html(body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(body, status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        refused = _refusal(request, host_ok)
        with ondemand.serving():  # the background logit lens waits while any page is served
            response = html(render.error_page(*refused, links), refused[0]) if refused else await call_next(request)
        response.headers.update(HEADERS)
        return response

    def known_sae(name: str) -> str:
        if name not in db.saes:
            raise HTTPException(404, f"no SAE named '{name}' in this run: pick one from the suite page")
        return name

    def known_latent(name: str, latent: str) -> int:
        known_sae(name)
        ok = latent.isascii() and latent.isdigit() and int(latent) < db.saes[name].d_sae  # not "²", not 10**40
        if not ok:
            raise HTTPException(
                404, f"{name} has no latent '{latent}': latents are numbered 0-{db.saes[name].d_sae - 1}"
            )
        return int(latent)

    async def form_of(request: Request) -> dict[str, str]:
        """The posted form as plain strings (urlencoded bodies only; no multipart dependency)."""
        chunks, size = [], 0
        async for chunk in request.stream():  # a body without Content-Length is capped as it arrives
            size += len(chunk)
            if size > MAX_BODY:
                raise HTTPException(413, f"the form is larger than {MAX_BODY // 1024} KB: send a shorter text")
            chunks.append(chunk)
        body = b"".join(chunks).decode("utf-8", errors="replace")
        return {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        message = (
            exc.detail
            if exc.status_code != 404 or exc.detail != "Not Found"
            else "no such page: start from the suite page"
        )
        return html(render.error_page(exc.status_code, str(message), links), exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError):
        return html(render.error_page(400, "malformed request: check the address or the form", links), 400)

    @app.exception_handler(SaescopeError)
    async def user_error(_request: Request, exc: SaescopeError):
        return html(render.error_page(400, str(exc), links), 400)

    @app.exception_handler(Exception)
    async def server_error(_request: Request, exc: Exception):
        log.exception("browser request failed", exc_info=exc)
        return html(
            render.error_page(500, "internal error while rendering this page; the server log has the details", links),
            500,
        )

    @app.get("/", response_class=HTMLResponse)
    def overview(metric: str = "l0"):
        return html(render.overview(db, links, metric))

    @app.get("/sae/{name}/", response_class=HTMLResponse)
    @app.get("/sae/{name}", response_class=HTMLResponse)
    def sae(name: str, sort: str = "freq_desc", q: str = ""):
        return html(render.sae_page(db, known_sae(name), links, sort, q))

    @app.get("/latent/{name}/{latent}", response_class=HTMLResponse)
    def latent(name: str, latent: str):
        return html(render.latent_page(db, ondemand.views(name, [known_latent(name, latent)])[0], links))

    @app.get("/search", response_class=HTMLResponse)
    def search(q: str = ""):
        return html(render.search_page(db, q, links))

    @app.get("/prompt", response_class=HTMLResponse)
    def prompt_form(text: str = ""):
        return html(render.prompt_page(db, links, text, live.analyze(text) if text.strip() else None))

    @app.post("/prompt", response_class=HTMLResponse)
    async def prompt_run(request: Request):
        text = (await form_of(request)).get("text", "")
        return html(render.prompt_page(db, links, text, live.analyze(text) if text.strip() else None))

    @app.get("/steer", response_class=HTMLResponse)
    def steer_form(request: Request):
        return html(render.steer_page(db, links, dict(request.query_params)))

    @app.post("/steer", response_class=HTMLResponse)
    async def steer_run(request: Request):
        form = await form_of(request)
        try:
            result = live.steer(SteerRequest.parse(form, live.suite))
        except SaescopeError as err:
            return html(render.steer_page(db, links, form, error=str(err)), 400)
        return html(render.steer_page(db, links, form, result))

    app.state.db, app.state.live, app.state.ondemand = db, live, ondemand
    return app


def check_address(host: str, port: int) -> None:
    """Bind the address once and let go, so a port in use or an unknown --host is one line before
    minutes of statistics, instead of uvicorn's log line and exit code 3 afterwards."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as e:
        raise SaescopeError(
            f"cannot serve on --host {host} --port {port} ({e.strerror or e}): choose another --port, "
            f"or a --host that names this machine"
        ) from e


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 8765) -> None:
    import uvicorn

    check_address(host, port)
    app = create_app(run, host, fill_lens=True)
    print(f"saescope: browsing {run} at http://{host}:{port}/ (Ctrl-C to stop)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
