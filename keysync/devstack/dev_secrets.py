"""The secrets `keysync up` hands its children when none are configured: generated on the
first start and kept in KEYSYNC_DATA_DIR/secrets.json (0600), so tokens, stored keys and
webhook signatures stay valid across restarts. Never printed."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from keysync.settings import (
    SECRET_HINTS,
    Settings,
    SettingsError,
    generate_secret,
    validate_secret,
)

SECRETS_FILE = "secrets.json"


def write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with a file only its owner may read (0600 from birth)."""
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def _load(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        loaded = json.loads(path.read_text())
        if not isinstance(loaded, dict):
            raise ValueError("not a JSON object")
        # Whoever loosened the mode, the file holds live secrets.
        path.chmod(0o600)
    except (OSError, ValueError) as exc:
        raise SettingsError(
            "KEYSYNC_DATA_DIR",
            f"{path} is unreadable ({exc}); repair it, or delete it to generate new "
            "secrets (tokens and stored game keys made with the old ones become unusable)",
        ) from None
    return {str(k): str(v) for k, v in loaded.items()}


def up_secrets(data_dir: Path, settings: Settings, say: Callable[[str], None]) -> dict[str, str]:
    """JWT_SECRET, KEY_ENCRYPTION_KEY and WEBHOOK_SECRETS for the children (as environment
    variables): the configured value when there is one, else the kept or a new one."""
    path = data_dir / SECRETS_FILE
    stored = _load(path)
    chosen: dict[str, str] = {}
    generated: list[str] = []
    for name in SECRET_HINTS:
        variable = name.upper()
        configured = getattr(settings, name).get_secret_value()
        if configured:
            chosen[variable] = configured
            continue
        if variable not in stored:
            stored[variable] = generate_secret(name)
            generated.append(variable)
        chosen[variable] = stored[variable]
    for variable, value in chosen.items():
        try:
            # Same check as the children apply, so a damaged file fails here, once.
            validate_secret(variable.lower(), value)
        except ValueError as exc:
            raise SettingsError(
                "KEYSYNC_DATA_DIR",
                f"{variable} in {path} is invalid ({exc}); repair or delete the file (tokens "
                "and stored game keys made with the old secrets become unusable)",
            ) from None
    if generated:
        write_private(path, json.dumps(stored, indent=2) + "\n")
        say(f"generated {', '.join(generated)} (kept in {path}, mode 0600)")
    from_file = [v for v in chosen if v in stored and v not in generated]
    if from_file:
        say(f"using {', '.join(from_file)} from {path}")
    return chosen
