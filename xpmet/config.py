"""Where xpmet keeps its files and which database it talks to, from the environment."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_home() -> Path:
    """Per-user data directory; root gets /var/lib/xpmet, which an unprivileged server user can reach."""
    if os.geteuid() == 0:
        return Path("/var/lib/xpmet")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "xpmet"


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str | None  # None means: use the embedded cluster

    @property
    def embedded(self) -> bool:
        return self.database_url is None


def settings() -> Settings:
    """Read the settings now (not at import), so tests and notebooks can change the environment."""
    home = Path(os.environ.get("XPMET_HOME") or default_home()).expanduser().resolve()
    url = os.environ.get("XPMET_DATABASE_URL") or None
    return Settings(home=home, database_url=url)
