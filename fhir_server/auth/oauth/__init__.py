"""SMART on FHIR authorization: the built-in OAuth 2.0 server, external OpenID providers, users and clients.

``install(app, settings, database_url)`` mounts the endpoints and returns the ``OAuthRuntime``
whose ``verifier`` the bearer-token middleware uses; ``start()``/``stop()`` belong in the lifespan.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # settings imports this package (OidcProviderSettings): import the rest lazily
    from fhir_server.auth.oauth.runtime import OAuthRuntime
    from fhir_server.settings import Settings

__all__ = ["PUBLIC_PATHS", "install"]

# open without a bearer token (the OAuth endpoints authenticate clients their own way)
PUBLIC_PATHS = frozenset({
    "/.well-known/smart-configuration", "/.well-known/openid-configuration", "/fhir/.well-known/smart-configuration",
    "/auth/authorize", "/auth/login", "/auth/token", "/auth/jwks", "/auth/introspect", "/auth/revoke",
})


def install(app: Any, settings: Settings, database_url: str) -> OAuthRuntime:
    from starlette.routing import Route

    from fhir_server.auth.oauth import admin, discovery, routes
    from fhir_server.auth.oauth.runtime import OAuthRuntime

    rt = OAuthRuntime(settings, database_url)
    app.state.oauth = rt
    mine = [Route(path, handler, methods=methods) for path, handler, methods in routes.ROUTES + admin.ROUTES]
    mine += [
        Route("/.well-known/smart-configuration", discovery.smart_configuration, methods=["GET"]),
        Route("/fhir/.well-known/smart-configuration", discovery.smart_configuration, methods=["GET"]),
        Route("/.well-known/openid-configuration", discovery.openid_configuration, methods=["GET"]),
    ]
    # ahead of the catch-all /fhir/{path:path} route of the FHIR API
    app.router.routes[:0] = mine
    return rt
