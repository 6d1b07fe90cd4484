"""Server configuration: one Settings object, read from the environment (prefix ``FHIR_``)."""

from __future__ import annotations

from pathlib import Path

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
