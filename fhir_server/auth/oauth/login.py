"""The login and consent page (``/auth/login``): plain HTML, no script, CSRF-protected.

CSRF: a random cookie (HttpOnly, SameSite=Strict, path ``/auth/login``) and a hidden form field
holding its HMAC under a per-database key; a POST without both matching is refused. The page is
served with ``frame-ancestors 'none'`` (no clickjacking) and ``Cache-Control: no-store``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from html import escape

from starlette.requests import Request
from starlette.responses import HTMLResponse

__all__ = ["AUTHORIZE_PARAMS", "CSRF_COOKIE", "check_csrf", "render"]

CSRF_COOKIE = "fhir_csrf"
# the authorization request's parameters, carried through the form unchanged
AUTHORIZE_PARAMS = ("response_type", "client_id", "redirect_uri", "scope", "state", "aud", "code_challenge",
                    "code_challenge_method", "nonce", "launch")
_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
}
_SCOPE_TEXT = {
    "openid": "your identity (OpenID Connect)",
    "fhirUser": "your FHIR user record",
    "launch/patient": "choose a patient for this app",
    "offline_access": "access while you are away (a refresh token)",
    "online_access": "access while you are logged in (a refresh token)",
}


def _mac(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def check_csrf(request: Request, key: bytes, field: str | None) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE)
    return bool(cookie and field and hmac.compare_digest(_mac(key, cookie), field))


def render(
    request: Request, key: bytes, params: dict[str, str], *, client_name: str, tenant: str, scopes: list[str],
    error: str | None = None, status: int = 200,
) -> HTMLResponse:
    cookie = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
    hidden = "\n".join(
        f'<input type="hidden" name="{name}" value="{escape(params[name])}">' for name in AUTHORIZE_PARAMS if name in params
    )
    items = "\n".join(
        f"<li><code>{escape(s)}</code>{' — ' + escape(_SCOPE_TEXT[s]) if s in _SCOPE_TEXT else ''}</li>" for s in scopes
    )
    patient = ""
    if "launch/patient" in scopes:
        patient = ('<label>Patient id (launch context) <input name="patient" pattern="[A-Za-z0-9\\-.]{1,64}" '
                   'autocomplete="off"></label>')
    problem = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem}}
label{{display:block;margin:.6rem 0}}input[type=text],input[type=password],input[name=patient]{{width:100%;padding:.3rem}}
.error{{color:#a00}}button{{margin:.6rem .4rem 0 0;padding:.4rem 1rem}}</style></head>
<body><h1>Sign in</h1>
<p><strong>{escape(client_name)}</strong> asks to access <strong>{escape(tenant)}</strong> on your behalf:</p>
<ul>{items}</ul>
{problem}
<form method="post" action="/auth/login">
{hidden}
<input type="hidden" name="csrf_token" value="{_mac(key, cookie)}">
<label>Username <input type="text" name="username" autocomplete="username" required></label>
<label>Password <input type="password" name="password" autocomplete="current-password" required></label>
{patient}
<button type="submit" name="action" value="approve">Sign in and allow</button>
<button type="submit" name="action" value="deny" formnovalidate>Deny</button>
</form></body></html>"""
    response = HTMLResponse(body, status_code=status, headers=_HEADERS)
    response.set_cookie(
        CSRF_COOKIE, cookie, httponly=True, samesite="strict", path="/auth/login",
        secure=request.url.scheme == "https",
    )
    return response


def error_page(message: str, status: int = 400) -> HTMLResponse:
    body = f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Error</title></head><body><h1>Cannot sign in</h1><p>{escape(message)}</p></body></html>"
    return HTMLResponse(body, status_code=status, headers=_HEADERS)
