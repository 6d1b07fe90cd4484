"""Server configuration: one Settings object, read from the environment (prefix ``FHIR_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from fhir_server.auth.oauth.external import OidcProviderSettings


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FHIR_", extra="ignore")

    # DATABASE_URL (no prefix) points at an external PostgreSQL; without it the embedded one is used.
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    data_dir: Path = Path("fhir-data")
    host: str = "127.0.0.1"
    port: int = 8080
    # Public base URL (e.g. https://fhir.example.org/fhir); derived from the request when unset.
    base_url: str | None = None
    # Development mode turns authentication off. Never set it on a server with real patient data.
    dev_mode: bool = False
    # keys the login page's CSRF tokens (default: generated once and kept in server_secret)
    auth_secret: SecretStr | None = None
    # access/id token lifetime (README "Authentication (SMART on FHIR)")
    token_ttl_seconds: int = Field(default=3600, ge=60, le=86400)
    # absolute lifetime of a refresh-token family (rotation does not extend it)
    refresh_token_ttl_seconds: int = Field(default=30 * 86400, ge=300)
    # the "iss" of the server's own tokens; default: the origin the request came to (or FHIR_BASE_URL's)
    auth_issuer: str | None = None
    # external OpenID Connect providers whose tokens are accepted: a JSON list of
    # fhir_server.auth.oauth.external.OidcProviderSettings (issuer, audience, jwks_url | jwks_file, claim names)
    oidc_providers: list[OidcProviderSettings] = Field(default_factory=list)
    max_body_bytes: int = 10 * 1024 * 1024
    default_page_size: int = 50
    max_page_size: int = 1000
    pool_min_size: int = 4
    pool_max_size: int = 16
    access_log: bool = True
    default_tenant: str = "default"

    # Audit trail (README "Audit trail"). FHIR_AUDIT=off stops recording audit rows: it exists for
    # bench/bench_audit.py only and must NEVER be used with real patient data (logged as an error).
    audit: bool = True
    audit_reader_roles: str = "auditor"  # roles that may read AuditEvent (comma-separated)
    audit_seal_interval: float = Field(default=1.0, gt=0)  # seconds between sealing passes (hash chain)
    audit_source_id: str = "fhir-server"  # AuditEvent.source.observer: this server's identity

    # Binary content (README "Files (Binary)"): size limit, allowed media types, where blobs live.
    # At most 2 GiB - 1: the recorded size is an R4 integer.
    max_binary_bytes: int = Field(default=100 * 1024 * 1024, ge=0, le=2**31 - 1)
    # content up to this size stays base64 in the row; larger goes to the blob store
    binary_inline_max_bytes: int = Field(default=16 * 1024, ge=0)
    # media type patterns, comma-separated; "!pattern" refuses (refusals win)
    binary_content_types: str = (
        "application/*,image/*,audio/*,video/*,model/*,text/plain,text/csv,text/rtf,text/xml,multipart/related,"
        "!image/svg+xml,!application/javascript,!application/ecmascript,!application/x-javascript,"
        "!application/xhtml+xml,!application/x-shockwave-flash"
    )
    blob_store: Literal["local", "s3"] = "local"
    blob_dir: Path | None = None  # default <data_dir>/blobs
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None  # e.g. http://minio:9000; unset for AWS
    s3_region: str | None = None

    # Bulk $export (fhir_server/bulk): NDJSON output files are split past either limit
    export_file_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    export_file_max_resources: int = Field(default=100_000, ge=1)

    # CORS (README "CORS and rate limits"): comma-separated origins; empty = no CORS headers
    cors_origins: str = ""
    cors_allow_credentials: bool = False
    cors_max_age: int = 600  # seconds a browser may cache a preflight answer
    # Rate limits per class of request, each applied per IP, per user and per OAuth client
    rate_limits: str = "read=6000/minute;search=3000/minute;write=3000/minute;bulk=20/minute;auth=30/minute"
    # postgresql (shared by all workers), memory (per process), off, or a limits URI (async+redis://host:6379)
    rate_limit_storage: str = "postgresql"

    # HL7 v2 bridge (hl7_bridge/README.md): the MLLP listener and its limits
    hl7_host: str = "127.0.0.1"
    hl7_max_message_bytes: int = Field(default=1024 * 1024, ge=1024)  # larger frames are refused with AR
    hl7_idle_timeout: float = Field(default=300.0, gt=0)  # seconds without a byte before a connection is closed
    hl7_max_connections: int = Field(default=200, ge=1)
    # senders not in the hl7_sender table: "refuse" (AR) or "accept" (into default_tenant as hl7:<app>@<facility>)
    hl7_unknown_sender: Literal["refuse", "accept"] = "refuse"
    hl7_default_charset: str = "utf-8"  # when MSH-18 is empty; undecodable bytes fall back to latin-1
    hl7_default_timezone: str = "UTC"  # for v2 times without an offset, unless the sender's own is configured
    hl7_accept_lf: bool = False  # accept <LF> as a segment separator (v2 requires <CR>)
    hl7_tls_cert: Path | None = None  # PEM certificate chain: with hl7_tls_key, MLLP over TLS
    hl7_tls_key: Path | None = None
    hl7_tls_client_ca: Path | None = None  # PEM CA bundle: client certificates required and verified
    hl7_pool_max_size: int = Field(default=10, ge=1)  # PostgreSQL connections of the listener process
    # OPD appointments (fhir_server/workflows/appointments/README.md)
    noshow_grace_minutes: int = Field(default=15, ge=0)  # booked → noshow only this long after the start
    opd_timezone: str = "Asia/Kolkata"  # the local day of the OPD queue tokens
