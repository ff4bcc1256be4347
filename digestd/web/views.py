"""Pages: the Jinja2 environment for ``templates/pages``, the stylesheet and error answers."""

from __future__ import annotations

import hashlib
from typing import Any

import jinja2
from starlette.responses import HTMLResponse, JSONResponse, Response

from digestd.config import Config
from digestd.errors import ConfigError
from digestd.render import TEMPLATES_DIR

PAGES = ("home", "inbox", "confirm", "manage", "unsubscribe", "feedback", "deleted", "error")
#: status → (JSON error code, page title) when the error says nothing more specific
STATUS: dict[int, tuple[str, str]] = {
    400: ("bad_request", "This request is not valid"),
    401: ("unauthorized", "This needs a link from one of our emails"),
    403: ("forbidden", "This link is no longer valid"),
    404: ("not_found", "Page not found"),
    405: ("method_not_allowed", "This page cannot do that"),
    413: ("too_large", "That is more than this form takes"),
    422: ("invalid_input", "Some of this is not valid"),
    429: ("rate_limited", "Too many requests"),
    500: ("internal_error", "Something went wrong on our side"),
    503: ("unavailable", "Please try again in a few minutes"),
}


def sentence(text: str) -> str:
    """Jinja filter: an error message as a sentence (capital first, one full stop)."""
    text = text.strip().rstrip(".")
    return f"{text[:1].upper()}{text[1:]}." if text else ""


def is_api(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


class Views:
    """Page templates loaded once (operator overrides first), and the site's one stylesheet."""

    def __init__(self, config: Config) -> None:
        search = [TEMPLATES_DIR] if config.templates is None else [config.templates, TEMPLATES_DIR]
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(search),
            autoescape=True,  # every page is HTML, whatever a template's name
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["sentence"] = sentence
        try:
            self.templates = {n: self.env.get_template(f"pages/{n}.html") for n in PAGES}
            loader = self.env.loader
            assert loader is not None
            css = loader.get_source(self.env, "pages/site.css")[0]
            icon = loader.get_source(self.env, "pages/favicon.svg")[0]
        except jinja2.TemplateError as exc:
            raise ConfigError(f"page template: {exc}") from exc
        self.css = css.encode()
        self.icon = icon.encode()
        # The stylesheet's URL changes with its content, so browsers may cache it for long.
        self.css_url = f"/static/site.css?v={hashlib.sha256(self.css).hexdigest()[:12]}"
        self.site_name = config.digest.site_name
        self.base_url = config.web.base_url

    def page(
        self, name: str, *, status: int = 200, headers: dict[str, str] | None = None, **ctx: Any
    ) -> HTMLResponse:
        context = {"site_name": self.site_name, "css_url": self.css_url, "title": "", **ctx}
        context.setdefault("icon_url", "/static/favicon.svg")
        html = self.templates[name].render(context)
        return HTMLResponse(html, status_code=status, headers=headers)

    def stylesheet(self) -> Response:
        return Response(
            self.css,
            media_type="text/css; charset=utf-8",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    def favicon(self) -> Response:
        return Response(
            self.icon,
            media_type="image/svg+xml",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    def error(
        self,
        path: str,
        status: int,
        message: str,
        *,
        code: str = "",
        title: str = "",
        headers: dict[str, str] | None = None,
        hint: str = "",
    ) -> Response:
        """The one error answer: JSON under /api/, otherwise the error page."""
        default_code, default_title = STATUS.get(status, ("error", "Something is not right"))
        if is_api(path):
            body = {"error": code or default_code, "message": message}
            return JSONResponse(body, status_code=status, headers=headers)
        return self.page(
            "error",
            status=status,
            headers=headers,
            title=title or default_title,
            message=message,
            hint=hint,
            status_code=status,
        )
