"""Server configuration: one Settings object, read from the environment (prefix ``FHIR_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    auth_secret: SecretStr | None = None
    token_ttl_seconds: int = 3600
    max_body_bytes: int = 10 * 1024 * 1024
    default_page_size: int = 50
    max_page_size: int = 1000
    pool_min_size: int = 4
    pool_max_size: int = 16
    access_log: bool = True
    default_tenant: str = "default"

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
