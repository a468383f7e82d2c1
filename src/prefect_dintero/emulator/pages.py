"""The emulator's two HTML pages: the identity provider's login page, and the callback page an
app would show (when the redirect URI is the emulator's own) with the URL to paste into
Prefect's resume form. Every value is escaped."""

from __future__ import annotations

from html import escape

STYLE = """
body { font-family: system-ui, sans-serif; background: #f4f5f7; margin: 0; }
main { max-width: 34rem; margin: 4rem auto; background: #fff; padding: 2rem 2.5rem;
       border-radius: 8px; box-shadow: 0 1px 4px rgba(0,0,0,.15); }
h1 { font-size: 1.4rem; margin-top: 0; } .muted { color: #5f6368; font-size: .9rem; }
button { font-size: 1rem; padding: .6rem 1.4rem; border: 0; border-radius: 4px;
         background: #1a56db; color: #fff; cursor: pointer; }
textarea { width: 100%; font-family: monospace; font-size: .85rem; }
code { background: #f1f3f4; padding: .1rem .3rem; border-radius: 3px; }
"""


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}"
        f"</title><style>{STYLE}</style></head><body><main>{body}</main></body></html>"
    )


def login_page(params: dict[str, str], user_name: str, accounts: list[str]) -> str:
    """Who logs in, for which client, and where the browser goes next; one button."""
    hidden = "".join(
        f"<input type='hidden' name='{escape(k)}' value='{escape(v)}'>" for k, v in params.items()
    )
    return _page(
        "Dintero emulator: log in",
        "<h1>Log in to Dintero</h1>"
        "<p class='muted'>The bundled emulator's identity provider: no password, one test "
        "user.</p>"
        f"<p>API client <code>{escape(params.get('client_id', ''))}</code> asks to act as "
        f"<strong>{escape(user_name)}</strong> on account(s) {escape(', '.join(accounts))}.</p>"
        f"<p class='muted'>Afterwards the browser goes to "
        f"<code>{escape(params.get('redirect_uri', ''))}</code> with a one-time code.</p>"
        f"<form method='post' action='/oidc/authorize'>{hidden}"
        f"<button type='submit'>Log in as {escape(user_name)}</button></form>",
    )


def callback_page(url: str, code: str) -> str:
    """What the user pastes into the paused ``dintero-login`` run's resume form."""
    return _page(
        "Logged in to Dintero",
        "<h1>Logged in to Dintero</h1>"
        "<p>Copy this page's address into the paused <code>dintero-login</code> run's "
        "<em>Resume</em> form in Prefect: it carries the code and the state of the login "
        "link. The code works once, within a minute or so.</p>"
        f"<p><label>Redirect URL<br><textarea id='redirect-url' rows='4' readonly>"
        f"{escape(url)}</textarea></label></p>"
        f"<p>Code (for a non-interactive login that made no login link): "
        f"<code id='code'>{escape(code)}</code></p>",
    )
