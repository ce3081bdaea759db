"""One-click email unsubscribe (RFC 8058), no login: the link's token is the authentication.

Mail clients POST `List-Unsubscribe=One-Click` to the List-Unsubscribe URL; a person who
opens the link gets a page whose button makes the same POST. GET never unsubscribes: link
scanners and previews fetch every URL in a message.
"""

from __future__ import annotations

from html import escape
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from hub.compliance import check_unsubscribe_token
from hub.compliance_actions import do_unsubscribe_email
from hub.context import Hub
from hub.errors import Forbidden

router = APIRouter(prefix="/v1/unsubscribe", tags=["unsubscribe"])

Sig = Annotated[str | None, Query(max_length=512, description="the link's token")]

_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
</head><body style="font-family: sans-serif; max-width: 32em; margin: 4em auto">
<h1 style="font-size: 1.4em">{title}</h1>{body}</body></html>"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=escape(title), body=body), status_code=status)


@router.get("/{message_id}", response_class=HTMLResponse)
async def unsubscribe_page(request: Request, message_id: UUID, sig: Sig = None) -> HTMLResponse:
    """A confirmation page with one button; nothing changes until it is pressed."""
    hub: Hub = request.app.state.hub
    if not check_unsubscribe_token(hub.box, str(message_id), sig):
        return _page("This link is not valid", "<p>Use the unsubscribe link from the email "
                     "itself.</p>", 403)
    action = escape(f"{request.url.path}?{request.url.query}")
    return _page("Unsubscribe", f"""<p>Stop receiving these emails?</p>
<form method="post" action="{action}"><input type="hidden" name="List-Unsubscribe"
value="One-Click"><button type="submit">Unsubscribe</button></form>""")


@router.post("/{message_id}", response_class=HTMLResponse)
async def unsubscribe(request: Request, message_id: UUID, sig: Sig = None) -> HTMLResponse:
    """Suppress the message's recipient for its sub-account (idempotent)."""
    hub: Hub = request.app.state.hub
    if not check_unsubscribe_token(hub.box, str(message_id), sig):
        raise Forbidden("the unsubscribe link is not valid", code="unsubscribe_link_invalid")
    await do_unsubscribe_email(hub, message_id)
    return _page("You are unsubscribed", "<p>You will not receive these emails any more."
                 "</p>")
