"""Configuration: attrs classes read from a TOML file overlaid by ``TROOPER_*`` variables.

Every setting has an embedded default, so ``trooper serve`` runs with no file at all. A bad setting
stops start-up with :class:`ConfigError`, whose message is one line in Trooper's words naming the
setting (and the variable it came from): the first thing a new user does is mistype one, and a
library's wording (``Extra fields in constructor``, ``typing.Literal[...]``) tells them nothing.

Checking is generic: :func:`structure_config` walks the attrs fields of every section and checks
each value against the field's annotation (``str``, ``int``, ``float``, ``bool``, ``X | None``,
``Literal[...]``), so a field added to a section is validated, reachable from the environment and
listed by :func:`settings` without further code. Range checks live on the fields as validators that
raise :class:`SettingError`, so embedders building a section by hand get the same words.

Environment variables: ``TROOPER_<SECTION>_<FIELD>`` for every field (``TROOPER_OLLAMA_MODEL``,
``TROOPER_SERVER_MAX_BODY_BYTES``…), plus the short aliases in :data:`ENV_ALIASES`.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final, Literal, Union
from urllib.parse import urlsplit

import attrs
import cattrs
import platformdirs

DEFAULT_ANTHROPIC_BASE_URL: Final = "https://api.anthropic.com"
DEFAULT_OLLAMA_BASE_URL: Final = "http://127.0.0.1:11434"
#: The prompt marker that makes one turn local. It starts with none of Claude Code's own prefixes
#: (``/`` commands, ``!`` shell, ``#`` memory, ``@`` files) so it never collides with them.
DEFAULT_LOCAL_MARKER: Final = "::local"

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class ConfigError(Exception):
    """A setting is wrong; the message names it and fits on one line."""


class SettingError(ValueError):
    """A field's validator refused a value; :attr:`reason` is the part after the setting's name."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field} {reason}")
        self.field = field
        self.reason = reason


def _show(value: Any) -> str:
    """A value as a user wrote it: strings quoted, booleans in TOML's spelling, tables and lists named."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)


# --------------------------------------------------------------------------------------- validators


def _base_url(appends: str, *doubled: str) -> Any:
    """An http(s) URL with a host, whose path does not end in one Trooper appends itself.

    The providers add ``/v1/messages`` (cloud) or ``/api/chat`` (Ollama) to the base URL, so a base URL
    copied with that prefix (``https://api.anthropic.com/v1``) would make every request 404.
    """

    def check(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingError(attribute.name, f"must be an http(s) URL with a host, got {value!r}")
        if parts.query or parts.fragment:
            raise SettingError(attribute.name, f"must not have a query or fragment, got {value!r}")
        path = parts.path.rstrip("/")
        for suffix in doubled:
            if path == suffix or path.endswith(suffix):
                hint = value[: value.rstrip("/").rfind(suffix)] or f"{parts.scheme}://{parts.netloc}"
                raise SettingError(
                    attribute.name, f"must not end in {suffix}: Trooper appends {appends} itself (use {hint!r})"
                )

    return check


def _port(instance: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 65535:
        raise SettingError(attribute.name, f"must be between 0 and 65535, got {value!r}")


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        raise SettingError(attribute.name, f"must be positive, got {value!r}")


def _not_negative(instance: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value >= 0:
        raise SettingError(attribute.name, f"must be zero or more, got {value!r}")


def _not_empty(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.strip():
        raise SettingError(attribute.name, "must not be empty")


def _marker(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.strip():
        raise SettingError(attribute.name, "must not be empty: it is how a prompt asks for a local turn")
    if any(character.isspace() for character in value):
        raise SettingError(attribute.name, f"must be one word without spaces, got {value!r}")


@attrs.frozen
class ServerConfig:
    host: str = attrs.field(default="127.0.0.1", validator=_not_empty)
    port: int = attrs.field(default=8787, validator=_port)
    #: Request bodies larger than this get 413 ``request_too_large`` (Anthropic's own limit is 32 MB).
    max_body_bytes: int = attrs.field(default=32 * 1024 * 1024, validator=_positive)
    #: The lowest level of the JSON log lines on stderr.
    log_level: LogLevel = "info"
    #: Bearer token the admin API (``/trooper/…``, ``/metrics``) requires. Trooper refuses to listen on
    #: a non-loopback address without one.
    admin_token: str | None = attrs.field(default=None, repr=False)
    #: ``trooper serve`` refuses the in-memory store, which loses the provenance ledger on restart,
    #: unless this acknowledges it (``--ephemeral``).
    ephemeral: bool = False
    #: Processes serving the port (``--workers``); they share the store — SQLite or Redis — and with
    #: it the ledger, the cloud's health and the per-conversation lock.
    workers: int = attrs.field(default=1, validator=_positive)


@attrs.frozen
class AnthropicConfig:
    #: Without ``/v1``: the provider appends ``/v1/messages`` (a ``/v1`` here would make every turn 404).
    base_url: str = attrs.field(
        default=DEFAULT_ANTHROPIC_BASE_URL, validator=_base_url("/v1/messages", "/v1", "/v1/messages")
    )
    #: When unset, the client's own ``x-api-key`` / ``Authorization`` is forwarded.
    api_key: str | None = attrs.field(default=None, repr=False)
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: Time allowed until the upstream's response headers arrive.
    first_byte_timeout: float = attrs.field(default=600.0, validator=_positive)
    #: Longest silence allowed between two chunks of a stream; there is no cap on a stream's length.
    idle_timeout: float = attrs.field(default=300.0, validator=_positive)
    #: 529 and 5xx answers are retried this many times (back-off doubling from ``overload_backoff``
    #: seconds) before the turn falls back to the local model.
    overload_retries: int = attrs.field(default=2, validator=_not_negative)
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
    #: Ollama's root: the provider appends ``/api/chat``; ``/v1`` is Ollama's OpenAI-compatible API, not this.
    base_url: str = attrs.field(
        default=DEFAULT_OLLAMA_BASE_URL, validator=_base_url("/api/chat", "/api", "/api/chat", "/v1")
    )
    model: str = attrs.field(default="qwen3", validator=_not_empty)
    #: The model's context window; when unset it is read from ``/api/show``.
    context_length: int | None = attrs.field(default=None, validator=_positive)
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
    #: ``memory``, a path to an SQLite file (the default lives in the user's data directory), or a
    #: Redis URL (``redis://host:port/db``, ``rediss://`` for TLS) that several instances share.
    path: str = attrs.field(factory=lambda: str(default_store_path()), validator=_not_empty)
    #: The Redis password when the URL has none (better from the environment than from a file). It is
    #: never logged or shown: messages name the server without it.
    redis_password: str | None = attrs.field(default=None, repr=False)
    #: Longest wait, in seconds, for any one Redis call (connecting included). A call that takes longer
    #: refuses its turn with a 503 rather than hang it.
    redis_timeout: float = attrs.field(default=2.0, validator=_positive)
    #: How long, in seconds, a conversation's lock in Redis outlives an instance that died holding it. A
    #: live holder renews it, so a long local reply keeps it.
    lock_ttl: float = attrs.field(default=30.0, validator=_positive)
    #: Make each ledger append wait until Redis has synced it to its append-only file (``WAITAOF``,
    #: Redis 7.2 and later): acknowledged records then survive a power loss with ``appendfsync everysec``.
    redis_wait_aof: bool = False


@attrs.frozen
class RetentionConfig:
    """How long conversations and their audit trail are kept. Ledger entries are never pruned:
    they are what keeps local content out of the cloud, whatever happened to the conversation."""

    #: Conversations idle longer than this are pruned (``0`` prunes every idle one); unset keeps them.
    max_age_days: float | None = attrs.field(default=90.0, validator=_not_negative)
    max_sessions: int | None = attrs.field(default=100_000, validator=_positive)
    max_audit_per_session: int | None = attrs.field(default=10_000, validator=_positive)
    #: How often the pruning runs while serving.
    interval_seconds: float = attrs.field(default=3600.0, validator=_positive)


@attrs.frozen
class MemoryConfig:
    """How a local turn's memory is built (the Anchor, SITREP and Tail of :mod:`trooper.memory`)."""

    #: Who writes the SITREP: ``extractive`` (chosen from the conversation's own lines; no model, the
    #: default), ``model`` (the local model writes it in the background, extractive lines fill what it
    #: does not cover yet) or ``auto`` (the model's once it covers at least half of what it replaces).
    #: Extractive is the default because a local model usually serves one request at a time: a
    #: background summary would make the user's next local turn wait for it.
    sitrep: Literal["extractive", "model", "auto"] = "extractive"
    #: Model-written SITREPs in progress at once (each is one local-model request).
    sitrep_concurrency: int = attrs.field(default=1, validator=_positive)
    #: Conversations waiting for a model-written SITREP; beyond it, a turn's request is skipped.
    sitrep_queue: int = attrs.field(default=16, validator=_positive)
    #: Longest a model-written SITREP may take, in seconds, before it is given up (extractive then).
    sitrep_timeout: float = attrs.field(default=300.0, validator=_positive)


@attrs.frozen
class ProvidersConfig:
    #: Entry-point names in the ``trooper.providers`` group.
    cloud: str = attrs.field(default="anthropic", validator=_not_empty)
    #: Empty for no local provider (forced-local turns then fail closed).
    local: str = "ollama"


@attrs.frozen
class Config:
    server: ServerConfig = attrs.field(factory=ServerConfig)
    anthropic: AnthropicConfig = attrs.field(factory=AnthropicConfig)
    ollama: OllamaConfig = attrs.field(factory=OllamaConfig)
    locality: LocalityConfig = attrs.field(factory=LocalityConfig)
    store: StoreConfig = attrs.field(factory=StoreConfig)
    memory: MemoryConfig = attrs.field(factory=MemoryConfig)
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
    "TROOPER_REDIS_PASSWORD": ("store", "redis_password"),
}

#: ``TROOPER_*`` variables that are not settings and must not be mistaken for misspelt ones.
_NOT_SETTINGS: Final = frozenset({"TROOPER_CONFIG"})

_converter = cattrs.Converter()

# ------------------------------------------------------------------------------------------ settings


@attrs.frozen
class Setting:
    """One field of one section, as a user meets it: its dotted name, its variables, its type."""

    section: str
    field: str
    kind: Any
    default: Any

    @property
    def name(self) -> str:
        return f"{self.section}.{self.field}"

    @property
    def env(self) -> str:
        """The variable that always works: ``TROOPER_<SECTION>_<FIELD>``."""
        return f"TROOPER_{self.section}_{self.field}".upper()

    @property
    def aliases(self) -> tuple[str, ...]:
        return tuple(name for name, target in ENV_ALIASES.items() if target == (self.section, self.field))

    @property
    def expects(self) -> str:
        """The type in words (``an integer``, ``one of 'block', 'redact', 'warn'``)."""
        return _expects(self.kind)


def settings() -> list[Setting]:
    """Every setting of every section, in declaration order (what the README's table must list)."""
    out: list[Setting] = []
    for section, cls in _SECTIONS.items():
        for field in attrs.fields(cls):
            default = field.default
            if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                default = default.factory()
            out.append(Setting(section, field.name, field.type, default))
    return out


# ------------------------------------------------------------------------------------------- typing


class _Mismatch(Exception):
    """A value is not of its field's type; the message is what was expected (``expected an integer``)."""


_BOOL_WORDS: Final[Mapping[str, bool]] = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


def _optional(kind: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``, ``(kind, False)`` otherwise."""
    if typing.get_origin(kind) in (Union, types.UnionType):
        args = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if len(args) == 1 and len(typing.get_args(kind)) == 2:
            return args[0], True
    return kind, False


def _expects(kind: Any) -> str:
    inner, optional = _optional(kind)
    if typing.get_origin(inner) is Literal:
        words = "one of " + ", ".join(repr(choice) for choice in typing.get_args(inner))
    elif inner is bool:
        words = "true or false"
    elif inner is int:
        words = "an integer"
    elif inner is float:
        words = "a number"
    elif inner is str:
        words = "a string"
    else:
        raise TypeError(f"config fields of type {kind!r} are not supported; add them to trooper.config._typed")
    return words + (" (or nothing, to unset it)" if optional else "")


def _typed(kind: Any, value: Any, *, text: bool) -> Any:
    """``value`` as ``kind``; strings (always, from the environment) are parsed the same way everywhere.

    ``text`` says the value came from an environment variable: there an empty string unsets an
    optional setting, as ``FOO=`` does in a shell.
    """
    inner, optional = _optional(kind)
    if optional and (value is None or (text and value == "")):
        return None
    expected = f"expected {_expects(inner)}"
    if typing.get_origin(inner) is Literal:
        choices = typing.get_args(inner)
        if isinstance(value, str):
            for choice in choices:
                if isinstance(choice, str) and value.strip().lower() == choice.lower():
                    return choice
        if value in choices and not isinstance(value, bool):
            return value
        raise _Mismatch(expected)
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        raise _Mismatch(expected)
    if inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise _Mismatch(expected)
    if inner is float:
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if number is None or not math.isfinite(number):
            raise _Mismatch(expected)
        return number
    if inner is str:
        if isinstance(value, str):
            return value
        raise _Mismatch(expected)
    raise TypeError(f"unsupported config type {kind!r}")


# ------------------------------------------------------------------------------------------ loading


def _suggest(section: str | None, field: str) -> str:
    """``; did you mean server.port?`` for a near miss, or nothing."""
    if section is not None and section in _SECTIONS:
        fields = list(attrs.fields_dict(_SECTIONS[section]))
        close = difflib.get_close_matches(field, fields, n=1, cutoff=0.6)
        if close:
            return f"; did you mean {section}.{close[0]}?"
        elsewhere = [s.name for s in settings() if s.field == field]
        if elsewhere:
            return f"; did you mean {elsewhere[0]}?"
        return f"; {section} has {', '.join(fields)}"
    close = difflib.get_close_matches(field, list(_SECTIONS), n=1, cutoff=0.6)
    if close:
        return f"; did you mean [{close[0]}]?"
    return f"; the sections are {', '.join(_SECTIONS)}"


def _env_names() -> dict[str, tuple[str, str]]:
    names = {setting.env: (setting.section, setting.field) for setting in settings()}
    names.update(ENV_ALIASES)
    return names


def _env_overrides(environ: Mapping[str, str]) -> Iterator[tuple[str, str, str, str]]:
    """``(section, field, variable, raw value)`` for every ``TROOPER_*`` setting variable.

    Aliases come first so the long name wins when both are set. A variable that is no setting but
    close to one (``TROOPER_OLAMA_MODEL``) is an error; others (``TROOPER_CONFIG``, variables of
    other tools that share the prefix) are left alone.
    """
    known = _env_names()
    ordered = sorted(
        (name for name in environ if name.startswith("TROOPER_")), key=lambda name: name not in ENV_ALIASES
    )
    for name in ordered:
        value = environ[name]
        if name in known:
            section, field = known[name]
            yield section, field, name, value
            continue
        if name in _NOT_SETTINGS:
            continue
        rest = name.removeprefix("TROOPER_").lower()
        prefix = next((s for s in _SECTIONS if rest.startswith(s + "_")), None)
        if prefix is not None:
            field = rest.removeprefix(prefix + "_")
            close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else _suggest(prefix, field)
            raise ConfigError(f"unknown setting {prefix}.{field} (from {name}){hint}")
        close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.85)
        if close:
            raise ConfigError(f"unknown setting {name}; did you mean {close[0]}?")


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
        except IsADirectoryError:
            raise ConfigError(f"config file {file} is a directory") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
    sources: dict[tuple[str, str], str] = {}
    for section, field, name, raw in _env_overrides(environ):
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"bad setting {section}: expected a table ([{section}]), got {_show(target)}")
        target[field] = raw
        sources[section, field] = name
    return _structure(data, sources)


def structure_config(data: Mapping[str, Any]) -> Config:
    """Validate a plain dict (as read from TOML) into :class:`Config`."""
    return _structure(data, {})


def _structure(data: Mapping[str, Any], sources: Mapping[tuple[str, str], str]) -> Config:
    for key in data:
        if key not in _SECTIONS:
            raise ConfigError(f"unknown setting {key}{_suggest(None, key)}")
    sections: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        table = data.get(section, {})
        if not isinstance(table, Mapping):
            raise ConfigError(f"bad setting {section}: expected a table ([{section}]), got {_show(table)}")
        fields = attrs.fields_dict(cls)
        values: dict[str, Any] = {}
        for field, value in table.items():
            if field not in fields:
                raise ConfigError(f"unknown setting {section}.{field}{_suggest(section, field)}")
            source = sources.get((section, field))
            where = f"{section}.{field}" + (f" (from {source})" if source else "")
            try:
                values[field] = _typed(fields[field].type, value, text=source is not None)
            except _Mismatch as exc:
                raise ConfigError(f"bad setting {where}: {exc}, got {_show(value)}") from None
        try:
            sections[section] = cls(**values)
        except SettingError as exc:
            source = sources.get((section, exc.field))
            where = f"{section}.{exc.field}" + (f" (from {source})" if source else "")
            raise ConfigError(f"bad setting {where}: {exc.reason}") from None
    return Config(**sections)


def redacted(config: Config) -> dict[str, Any]:
    """The configuration as a dict with credentials replaced: what ``doctor`` and logs may show."""
    data: dict[str, Any] = _converter.unstructure(config)
    if data["anthropic"].get("api_key"):
        data["anthropic"]["api_key"] = "***"
    if data["server"].get("admin_token"):
        data["server"]["admin_token"] = "***"
    if data["store"].get("redis_password"):
        data["store"]["redis_password"] = "***"
    data["store"]["path"] = store_location(data["store"]["path"])
    return data


def store_location(path: str) -> str:
    """``store.path`` as it may be shown: a Redis URL without its user and password."""
    if not path.startswith(("redis://", "rediss://")):
        return path
    parts = urlsplit(path)
    if parts.password is None and parts.username is None:
        return path
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://***@{host}{port}{parts.path}"
