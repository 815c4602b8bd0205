"""Settings from `MSHT_CDS_*` environment variables; validators fail closed."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_ROOT = Path(__file__).resolve().parent
"""Where the bundled library lives when installed from a checkout (src layout)."""


def _default_library_dir() -> Path:
    return PACKAGE_ROOT.parent.parent / "pathways"


def _default_cards_dir() -> Path:
    return PACKAGE_ROOT.parent.parent / "cards"


DEVELOPMENT_HASH_KEY = "development-only-key-change-me"


class Settings(BaseSettings):
    """Everything an operator can set. Defaults are the embedded development setup."""

    model_config = SettingsConfigDict(env_prefix="MSHT_CDS_", env_nested_delimiter="__")

    library_dir: Path = Field(default_factory=_default_library_dir)
    cards_dir: Path = Field(default_factory=_default_cards_dir)
    database_url: str = "sqlite:///./var/msht-cds.db"
    auth: Literal["on", "off"] = "on"
    clients_file: Path | None = None
    public_base_url: str = "http://127.0.0.1:8000"
    fhir_allowlist: str = ""
    nation: Literal["england", "wales", "scotland", "northern_ireland"] = "england"
    locality: str | None = None
    patient_hash_key: str = DEVELOPMENT_HASH_KEY
    max_body_bytes: int = 16 * 1024 * 1024
    max_resources: int = 20_000
    hook_deadline_seconds: float = 4.0
    fhir_connect_timeout: float = 2.0
    fhir_read_timeout: float = 3.0
    fhir_max_pages: int = 10
    fhir_max_response_bytes: int = 16 * 1024 * 1024
    fhir_allow_private_networks: bool = False
    jwt_leeway_seconds: int = 60
    override_memory_days: int = 30
    reload_interval_seconds: float = 10.0
    preview: Literal["on", "off"] | None = None
    cors_origins: str = ""
    log_format: Literal["json", "console"] = "json"
    docs_url: str | None = "/docs"

    @field_validator("public_base_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @property
    def fhir_allowlist_prefixes(self) -> list[str]:
        return [p.strip() for p in self.fhir_allowlist.split(",") if p.strip()]

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    def serving_problems(self) -> list[str]:
        """Reasons not to serve hook calls with these settings (offline tools need none):
        the keyed hash hides patient ids only while its key is secret, so with auth on (any
        real deployment) the public development key is refused."""
        if self.auth == "on" and (
            self.patient_hash_key == DEVELOPMENT_HASH_KEY or len(self.patient_hash_key) < 32
        ):
            return [
                "MSHT_CDS_PATIENT_HASH_KEY must be a secret of at least 32 characters when "
                "MSHT_CDS_AUTH=on (e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
            ]
        return []

    @property
    def auth_enabled(self) -> bool:
        return self.auth == "on"

    @property
    def preview_enabled(self) -> bool:
        """The lead's preview page: on in local development (auth off) unless set."""
        return self.preview == "on" if self.preview is not None else not self.auth_enabled


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`: the only binds where auth may be off."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@lru_cache
def get_settings() -> Settings:
    return Settings()
