"""Service settings: one `Settings` object read from `PMSTORE_*` environment variables.

Sizes accept bytes or a unit (`64MiB`, `16GiB`; allocator.sizes.parse_size). Validators
refuse unsafe or inconsistent values at start (a max object size larger than the heap
may grow, `sync` durability without persist barriers), so a bad deployment fails before
it opens the heap. `pmstore serve` flags override the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from allocator.sizes import parse_size

SIZE_FIELDS = ("heap_initial_size", "heap_max_size", "max_object_size")


class Settings(BaseSettings):
    """What `create_app` needs; every field is also `PMSTORE_<FIELD>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="PMSTORE_", frozen=True)

    heap_path: Path = Field(Path("data/pmstore.heap"), description="the heap file (created if missing)")
    heap_initial_size: int = Field(64 << 20, description="size of a new heap file, bytes")
    heap_max_size: int = Field(16 << 30, description="largest size the heap file may grow to, bytes")
    durability: Literal["sync", "os"] = Field("sync", description="sync: respond after the write is durable; "
                                              "os: page cache only (survives a process crash, not a power loss)")
    max_object_size: int = Field(64 << 20, description="largest object (and batch payload), bytes")
    api_token: SecretStr | None = Field(None, description="when set, /v1 requires 'Authorization: Bearer <token>'")
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0: any free port)")
    verify_reads: bool = Field(True, description="check each value's CRC32C on GET")
    # Advanced: the persist backend under sync durability (auto: flush on DAX, else msync).
    backend: Literal["auto", "msync", "flush"] = Field("auto", description="persist backend for sync durability")
    # Threads for writes (PUT, DELETE, batch). None: auto -- threads where a commit is a device
    # wait (msync on a disk file), so concurrent writers share commits (group commit); inline on
    # the event loop otherwise, where a thread hop costs more than the write.
    write_thread_count: int | None = Field(None, ge=0, le=256, description="writer threads; 0: inline, "
                                           "unset: auto")

    @field_validator(*SIZE_FIELDS, mode="before")
    @classmethod
    def _parse_size(cls, v):
        if isinstance(v, str):
            return parse_size(v)    # ValueError names the text and the accepted units
        return v

    @field_validator("api_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, v):
        return None if v == "" else v

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.heap_initial_size < 1 << 20:
            raise ValueError(f"heap_initial_size must be at least 1MiB, not {self.heap_initial_size} bytes")
        if self.heap_max_size < self.heap_initial_size:
            raise ValueError(f"heap_max_size ({self.heap_max_size} bytes) is below heap_initial_size "
                             f"({self.heap_initial_size} bytes)")
        if not 1 <= self.max_object_size <= self.heap_max_size // 2:
            raise ValueError(f"max_object_size must be 1 byte .. half of heap_max_size "
                             f"({self.heap_max_size // 2} bytes), not {self.max_object_size}")
        if self.durability == "os" and self.backend != "auto":
            raise ValueError(f"backend={self.backend!r} makes no sense with durability='os' (nothing is "
                             "persisted); use durability='sync'")
        if self.api_token is not None and len(self.api_token.get_secret_value()) < 16:
            raise ValueError("api_token must be at least 16 characters (a guessable token is no protection)")
        return self

    @property
    def store_backend(self) -> str | None:
        """Store.open's backend argument: None lets the durability choose."""
        return None if self.backend == "auto" else self.backend


def describe_error(exc) -> str:
    """A pydantic ValidationError as lines naming the environment variable: 'PMSTORE_PORT: ...'."""
    lines = []
    for err in exc.errors():
        loc = "_".join(str(x) for x in err.get("loc", ()))
        name = f"PMSTORE_{loc.upper()}" if loc else "settings"
        msg = err.get("msg", "").removeprefix("Value error, ")
        lines.append(f"{name}: {msg}")
    return "\n".join(lines)


__all__ = ["Settings", "describe_error"]
