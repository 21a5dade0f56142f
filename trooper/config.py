"""Configuration: attrs classes, structured by cattrs from a TOML file overlaid by ``TROOPER_*`` variables.

Every setting has an embedded default, so ``trooper serve`` runs with no file at all. A bad setting
stops start-up with :class:`ConfigError`, whose message is one line naming the setting (the CLI
prints it without a traceback).

Environment variables: ``TROOPER_<SECTION>_<FIELD>`` for every field (``TROOPER_OLLAMA_MODEL``,
``TROOPER_SERVER_MAX_BODY_BYTES``…), plus the short aliases in :data:`ENV_ALIASES`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import attrs
import cattrs
import platformdirs

DEFAULT_ANTHROPIC_BASE_URL: Final = "https://api.anthropic.com"
DEFAULT_OLLAMA_BASE_URL: Final = "http://127.0.0.1:11434"
#: The prompt marker that makes one turn local. It starts with none of Claude Code's own prefixes
#: (``/`` commands, ``!`` shell, ``#`` memory, ``@`` files) so it never collides with them.
DEFAULT_LOCAL_MARKER: Final = "::local"


class ConfigError(Exception):
    """A setting is wrong; the message names it and fits on one line."""


def _url(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{attribute.name} must be an http(s) URL with a host, got {value!r}")


def _port(attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{attribute.name} must be between 0 and 65535, got {value!r}")


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _marker(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.strip():
        raise ValueError(f"{attribute.name} must not be empty: it is how a prompt asks for a local turn")
    if any(character.isspace() for character in value):
        raise ValueError(f"{attribute.name} must be one word without spaces, got {value!r}")


@attrs.frozen
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = attrs.field(default=8787, validator=lambda _, a, v: _port(a, v))
    #: Request bodies larger than this get 413 ``request_too_large`` (Anthropic's own limit is 32 MB).
    max_body_bytes: int = attrs.field(default=32 * 1024 * 1024, validator=_positive)
    log_level: str = "info"
    #: Bearer token the admin API (``/trooper/…``, ``/metrics``) requires. Trooper refuses to listen on
    #: a non-loopback address without one.
    admin_token: str | None = attrs.field(default=None, repr=False)
    #: ``trooper serve`` refuses the in-memory store, which loses the provenance ledger on restart,
    #: unless this acknowledges it (``--ephemeral``).
    ephemeral: bool = False


@attrs.frozen
class AnthropicConfig:
    base_url: str = attrs.field(default=DEFAULT_ANTHROPIC_BASE_URL, validator=_url)
    #: When unset, the client's own ``x-api-key`` / ``Authorization`` is forwarded.
    api_key: str | None = attrs.field(default=None, repr=False)
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: Time allowed until the upstream's response headers arrive.
    first_byte_timeout: float = attrs.field(default=600.0, validator=_positive)
    #: Longest silence allowed between two chunks of a stream; there is no cap on a stream's length.
    idle_timeout: float = attrs.field(default=300.0, validator=_positive)
    #: 529 and 5xx answers are retried this many times (back-off doubling from ``overload_backoff``
    #: seconds) before the turn falls back to the local model.
    overload_retries: int = attrs.field(default=2, validator=attrs.validators.ge(0))
    overload_backoff: float = attrs.field(default=0.25, validator=_positive)
    #: Longest wait for the recovery probe (a ``count_tokens`` call): a turn that could use the cloud
    #: waits at most this long for it; a turn that runs locally never waits.
    probe_timeout: float = attrs.field(default=5.0, validator=_positive)
    #: The HTTP client stack for cloud calls: ``aiohttp`` (default: the fastest, see
    #: ``trooper/providers/transport.py`` for the measurements), ``httpx-aiohttp`` (httpx's API over
    #: aiohttp's pool) or ``httpx`` (httpcore's own pool).
    transport: Literal["aiohttp", "httpx-aiohttp", "httpx"] = "aiohttp"


@attrs.frozen
class OllamaConfig:
    base_url: str = attrs.field(default=DEFAULT_OLLAMA_BASE_URL, validator=_url)
    model: str = "qwen3"
    #: The model's context window; when unset it is read from ``/api/show``.
    context_length: int | None = None
    keep_alive: str | None = None
    connect_timeout: float = attrs.field(default=5.0, validator=_positive)
    first_byte_timeout: float = attrs.field(default=600.0, validator=_positive)
    idle_timeout: float = attrs.field(default=300.0, validator=_positive)


@attrs.frozen
class LocalityConfig:
    #: A prompt that starts with this token runs locally (the token is stripped). It cannot be empty:
    #: an empty marker would silently turn the control off and send ``::local`` prompts to the cloud.
    marker: str = attrs.field(default=DEFAULT_LOCAL_MARKER, validator=_marker)
    #: Replace withheld local turns with a one-line notice saying only how many were withheld.
    withheld_notice: bool = True
    #: What the egress guard does when a cloud payload contains ledgered text: block, redact or warn.
    egress_action: Literal["block", "redact", "warn"] = "block"
    #: Let content of fallback turns (quota/offline) reach the cloud once it recovers. Content the user
    #: forced local is never shared, whatever this says.
    share_fallback_after_recovery: bool = False
    #: Make the client's standing context (system prompt, ``role: "system"`` messages,
    #: ``<system-reminder>`` blocks) that a local turn saw local for that conversation's lineage. Off by
    #: default: that context is the client's (CLAUDE.md, environment notes), and withholding it from
    #: later cloud turns would break them.
    protect_client_context: bool = False


@attrs.frozen
class StoreConfig:
    #: ``memory`` or a path to an SQLite file (the default lives in the user's data directory).
    path: str = attrs.field(factory=lambda: str(default_store_path()))


@attrs.frozen
class RetentionConfig:
    """How long conversations and their audit trail are kept. Ledger entries are never pruned:
    they are what keeps local content out of the cloud, whatever happened to the conversation."""

    max_age_days: float | None = 90.0
    max_sessions: int | None = 100_000
    max_audit_per_session: int | None = 10_000
    #: How often the pruning runs while serving.
    interval_seconds: float = attrs.field(default=3600.0, validator=_positive)


@attrs.frozen
class ProvidersConfig:
    cloud: str = "anthropic"
    local: str = "ollama"


@attrs.frozen
class Config:
    server: ServerConfig = attrs.field(factory=ServerConfig)
    anthropic: AnthropicConfig = attrs.field(factory=AnthropicConfig)
    ollama: OllamaConfig = attrs.field(factory=OllamaConfig)
    locality: LocalityConfig = attrs.field(factory=LocalityConfig)
    store: StoreConfig = attrs.field(factory=StoreConfig)
    providers: ProvidersConfig = attrs.field(factory=ProvidersConfig)
    retention: RetentionConfig = attrs.field(factory=RetentionConfig)


_SECTIONS: Final[Mapping[str, type]] = {
    f.name: f.type for f in attrs.fields(attrs.resolve_types(Config)) if isinstance(f.type, type)
}
for _section in _SECTIONS.values():
    attrs.resolve_types(_section)


def default_store_path() -> Path:
    return Path(platformdirs.user_data_dir("trooper")) / "trooper.sqlite3"


#: Short environment names for the settings people set most.
ENV_ALIASES: Final[Mapping[str, tuple[str, str]]] = {
    "TROOPER_HOST": ("server", "host"),
    "TROOPER_PORT": ("server", "port"),
    "TROOPER_STORE": ("store", "path"),
    "TROOPER_MAX_BODY_BYTES": ("server", "max_body_bytes"),
    "TROOPER_LOCAL_MARKER": ("locality", "marker"),
    "TROOPER_ADMIN_TOKEN": ("server", "admin_token"),
}

_converter = cattrs.Converter(forbid_extra_keys=True)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """``TROOPER_*`` variables as a nested dict, with values still strings (typed later)."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in environ.items():
        if not name.startswith("TROOPER_"):
            continue
        if name in ENV_ALIASES:
            section, field = ENV_ALIASES[name]
        else:
            rest = name.removeprefix("TROOPER_").lower()
            section = next((s for s in _SECTIONS if rest.startswith(s + "_")), "")
            if not section:
                continue  # not a setting (e.g. TROOPER_CONFIG); unknown sections are ignored
            field = rest.removeprefix(section + "_")
        out.setdefault(section, {})[field] = (name, value)
    return out


def _coerce(section: str, field: str, source: str, raw: str) -> Any:
    """Turn an environment string into the field's type, naming the variable when it cannot."""
    fields = attrs.fields_dict(_SECTIONS[section])
    if field not in fields:
        raise ConfigError(f"unknown setting {section}.{field} (from {source})")
    kind = fields[field].type
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError("expected a boolean")
            return lowered in ("1", "true", "yes", "on")
        if kind in (int, int | None):
            return None if raw == "" and kind is not int else int(raw)
        if kind in (float, float | None):
            return None if raw == "" and kind is not float else float(raw)
    except ValueError as exc:
        reason = "expected a number" if kind is not bool else str(exc)
        raise ConfigError(f"bad setting {section}.{field} (from {source}): {reason}, got {raw!r}") from None
    return None if raw == "" and kind == (str | None) else raw


def load_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (or ``./trooper.toml`` when present), overlay ``TROOPER_*``, validate.

    Raises :class:`ConfigError` with one line naming the first bad setting.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    file = Path(path) if path is not None else Path(environ.get("TROOPER_CONFIG", "trooper.toml"))
    if path is not None or file.exists():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {file}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
    for section, values in _env_overrides(environ).items():
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"bad setting {section}: expected a table")
        for field, (source, raw) in values.items():
            target[field] = _coerce(section, field, source, raw)
    return structure_config(data)


def structure_config(data: Mapping[str, Any]) -> Config:
    """Validate a plain dict (as read from TOML) into :class:`Config`."""
    try:
        return _converter.structure(dict(data), Config)
    except Exception as exc:  # cattrs wraps every cause; turn it into one line naming the setting
        raise ConfigError(_describe(exc)) from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, cattrs.ClassValidationError):
        messages = cattrs.transform_error(exc, path="", format_exception=_format_exception)
        for message in messages:
            text, _, where = message.partition(" @ ")
            setting = where.removeprefix("$").removeprefix(".")
            if "extra fields" in text:
                return f"unknown setting in {setting or 'config'}: {text.split(':', 1)[-1].strip()}"
            field, sep, detail = text.partition(" ")
            if sep and setting in _SECTIONS and field in attrs.fields_dict(_SECTIONS[setting]):
                return f"bad setting {setting}.{field}: {detail}"
            return f"bad setting {setting or 'config'}: {text}"
        for inner in exc.exceptions:
            return _describe(inner)
    return f"bad setting: {exc}"


def _format_exception(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, ValueError) and str(exc).startswith("invalid literal for int()"):
        return "expected an integer"
    if not isinstance(exc, (cattrs.BaseValidationError, TypeError)) and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


def redacted(config: Config) -> dict[str, Any]:
    """The configuration as a dict with credentials replaced, for ``doctor`` and logs (DESIGN I6)."""
    data: dict[str, Any] = _converter.unstructure(config)
    if data["anthropic"].get("api_key"):
        data["anthropic"]["api_key"] = "***"
    if data["server"].get("admin_token"):
        data["server"]["admin_token"] = "***"
    return data
