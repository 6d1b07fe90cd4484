"""HTTP endpoints of the authorization server (outside ``/fhir``); errors are RFC 6749 §5.2 JSON.

``/auth/authorize`` (GET) → ``/auth/login`` (GET: the page; POST: credentials + consent) → the
client's redirect URI with ``code`` and ``state``; ``/auth/token``, ``/auth/introspect``,
``/auth/revoke`` (POST, form-encoded); ``/auth/jwks``; discovery documents in ``discovery.py``.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode

from authlib.oauth2.rfc6749.errors import OAuth2Error
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from fhir_server.auth.oauth import login, users
from fhir_server.auth.oauth.runtime import OAuthRuntime
from fhir_server.auth.oauth.server import Grantee, OAuthRequest, db

__all__ = ["ROUTES"]

log = logging.getLogger("fhir_server.auth")
_MAX_FORM = 64 * 1024
_PATIENT_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def runtime(request: Request) -> OAuthRuntime:
    rt: OAuthRuntime = request.app.state.oauth
    return rt


def oauth_error(error: str, description: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status, headers=_NO_STORE)


def _response(result: tuple[int, Any, list[tuple[str, str]]]) -> Response:
    status, body, headers = result
    hdrs = {k: v for k, v in headers}
    if status in (301, 302, 303, 307):
        return RedirectResponse(hdrs["Location"], status_code=302, headers=_NO_STORE)
    hdrs.pop("Content-Type", None)
    return JSONResponse(body if body is not None else {}, status_code=status, headers={**_NO_STORE, **hdrs})


async def _form(request: Request) -> list[tuple[str, str]]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise ValueError("send application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM:
            raise ValueError("form too large")
    return parse_qsl(body.decode("utf-8", errors="strict"), keep_blank_values=True)


def oauth_request(rt: OAuthRuntime, request: Request, params: list[tuple[str, str]]) -> OAuthRequest:
    origin = rt.origin(request.url.scheme, request.headers.get("host"))
    uri = f"{origin}{request.url.path}"
    return OAuthRequest(request.method, uri, request.headers, params, issuer=rt.issuer(origin),
                        fhir_base=rt.fhir_base(origin), token_url=f"{origin}/auth/token")


def _guarded(handler: Any) -> Any:
    async def run(request: Request) -> Response:
        try:
            response: Response = await handler(request)
            return response
        except ValueError as exc:
            return oauth_error("invalid_request", str(exc))
        except Exception:
            log.exception("OAuth endpoint failed", extra={"path": request.url.path})
            return oauth_error("server_error", "Internal error", 500)

    run.__name__ = handler.__name__
    return run


# -- authorization endpoint and login page -------------------------------------------------------

def _consent(rt: OAuthRuntime, req: OAuthRequest) -> Any:
    return rt.server.get_consent_grant(req, end_user=None)


def _authorize_error(error: OAuth2Error) -> Response:
    if error.redirect_uri:  # a registered redirect URI: tell the client there (RFC 6749 §4.1.2.1)
        status, _, headers = error()
        return RedirectResponse(dict(headers)["Location"], status_code=302, headers=_NO_STORE)
    status, body, _ = error()
    return JSONResponse(body, status_code=status, headers=_NO_STORE)  # never redirect to an unchecked URI


@_guarded
async def authorize(request: Request) -> Response:
    """RFC 6749 §4.1.1: check the request, then send the user to the login and consent page."""
    rt = runtime(request)
    params = list(request.query_params.multi_items())
    try:
        await rt.run(_consent, rt, oauth_request(rt, request, params))
    except OAuth2Error as error:
        return _authorize_error(error)
    return RedirectResponse(f"/auth/login?{urlencode(params)}", status_code=302, headers=_NO_STORE)


@_guarded
async def login_page(request: Request) -> Response:
    rt = runtime(request)
    params = list(request.query_params.multi_items())
    try:
        grant = await rt.run(_consent, rt, oauth_request(rt, request, params))
    except OAuth2Error as error:
        return _authorize_error(error)
    client = grant.request.client
    return login.render(request, rt.csrf_key, dict(params), client_name=client.name or client.client_id,
                        tenant=client.tenant, scopes=(grant.request.scope or "").split())


@_guarded
async def login_submit(request: Request) -> Response:
    rt = runtime(request)
    form = await _form(request)
    fields = dict(form)
    if not login.check_csrf(request, rt.csrf_key, fields.get("csrf_token")):
        return login.error_page("The form expired or did not come from this server; start again from the app.", 403)
    params = [(k, v) for k, v in form if k in login.AUTHORIZE_PARAMS]
    req = oauth_request(rt, request, params)
    req.method = "GET"  # an authorization request, whose parameters the form carried

    def decide() -> Any:
        grant = _consent(rt, req)
        client = grant.request.client
        scopes = (grant.request.scope or "").split()
        if fields.get("action") != "approve":
            return rt.server.create_authorization_response(req, grant_user=None, grant=grant)
        user = users.authenticate(db(), client.tenant, fields.get("username", ""), fields.get("password", ""))
        if user is None:
            return ("page", client, scopes, "Wrong username or password.", 401)
        patient = fields.get("patient", "").strip() or None
        if patient is None and user.fhir_user and user.fhir_user.startswith("Patient/"):
            patient = user.fhir_user.split("/", 1)[1]  # a patient logging in launches on themself
        if "launch/patient" in scopes:
            if patient is None or not _PATIENT_ID.match(patient):
                return ("page", client, scopes, "Choose the patient (a FHIR id) for this app.", 400)
        else:
            patient = None
        log.info("login", extra={"tenant": client.tenant, "user": user.username, "client_id": client.client_id})
        grantee = Grantee(user, patient, auth_time=int(time.time()))
        return rt.server.create_authorization_response(req, grant_user=grantee, grant=grant)

    try:
        result = await rt.run(decide)
    except OAuth2Error as error:
        return _authorize_error(error)
    if result[0] == "page":
        _, client, scopes, message, status = result
        log.info("login refused", extra={"tenant": client.tenant, "client_id": client.client_id, "status": status})
        return login.render(request, rt.csrf_key, dict(params), client_name=client.name or client.client_id,
                            tenant=client.tenant, scopes=scopes, error=message, status=status)
    return _response(result)


# -- token, introspection, revocation, keys ------------------------------------------------------

@_guarded
async def token(request: Request) -> Response:
    """RFC 6749 §3.2 / §4.1.3 / §4.4 / §6."""
    rt = runtime(request)
    req = oauth_request(rt, request, await _form(request))
    return _response(await rt.run(rt.server.create_token_response, req))


@_guarded
async def introspect(request: Request) -> Response:
    """RFC 7662 §2."""
    rt = runtime(request)
    req = oauth_request(rt, request, await _form(request))
    return _response(await rt.run(rt.server.create_endpoint_response, "introspection", req))


@_guarded
async def revoke(request: Request) -> Response:
    """RFC 7009 §2."""
    rt = runtime(request)
    req = oauth_request(rt, request, await _form(request))
    return _response(await rt.run(rt.server.create_endpoint_response, "revocation", req))


async def jwks(request: Request) -> Response:
    """The public keys of the server's access and id tokens (RFC 7517), old ones until their tokens expired."""
    return JSONResponse(runtime(request).keys.public_jwks(), headers={"Cache-Control": "public, max-age=300"})


ROUTES: list[tuple[str, Any, list[str]]] = [
    ("/auth/authorize", authorize, ["GET"]),
    ("/auth/login", login_page, ["GET"]),
    ("/auth/login", login_submit, ["POST"]),
    ("/auth/token", token, ["POST"]),
    ("/auth/introspect", introspect, ["POST"]),
    ("/auth/revoke", revoke, ["POST"]),
    ("/auth/jwks", jwks, ["GET"]),
]
