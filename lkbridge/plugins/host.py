"""The plugin host: loads the `lkbridge` entry points one by one, isolates failures, keeps registries."""

from __future__ import annotations

import importlib.metadata as md
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pluggy

from lkbridge import hookspecs
from lkbridge.hookspecs import BridgeFactory, TokenSourceFactory, TransportFactory
from lkbridge.log import get_logger

log = get_logger(__name__)

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
DISABLE_ENV = "LKBRIDGE_DISABLE_PLUGINS"
BUILTIN_DISTRIBUTION = "lkbridge"
MQTT_BRIDGE_PLUGIN = "mqtt-bridge"
"""The built-in bridge's entry-point name: disabling it is allowed, but never silently."""


@dataclass(frozen=True)
class TransportSpec:
    name: str
    factory: TransportFactory
    can_send: bool
    can_receive: bool
    plugin: str


F = TypeVar("F")


@dataclass(frozen=True)
class NamedFactory(Generic[F]):
    name: str
    factory: F
    plugin: str


@dataclass
class PluginInfo:
    """What `lkbridge plugins` shows for one entry point."""

    name: str
    distribution: str
    version: str
    registers: list[str] = field(default_factory=list)
    error: str | None = None
    disabled: bool = False

    @property
    def loaded(self) -> bool:
        return self.error is None and not self.disabled

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "registers": list(self.registers),
            "loaded": self.loaded,
            "disabled": self.disabled,
            "error": self.error,
        }


def disabled_from_env() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class PluginHost:
    """Owns the pluggy manager and the name registries built from every plugin's hooks."""

    def __init__(self, disable: Iterable[str] = ()) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.disabled = set(disable) | disabled_from_env()
        self.plugins: dict[str, PluginInfo] = {}
        self.conflicts: list[str] = []
        self.transports: dict[str, TransportSpec] = {}
        self.token_sources: dict[str, NamedFactory[TokenSourceFactory]] = {}
        self.bridges: dict[str, NamedFactory[BridgeFactory]] = {}

    # -- loading ---------------------------------------------------------------------------

    def load_entry_points(self, entry_points: Iterable[md.EntryPoint] | None = None) -> None:
        """Load every entry point of the group, built-ins first; a broken one is recorded and skipped."""
        eps = list(entry_points if entry_points is not None else md.entry_points(group=ENTRY_POINT_GROUP))

        def order(ep: md.EntryPoint) -> tuple[int, str, str]:
            dist = ep.dist.name if ep.dist is not None else ""
            return (0 if dist == BUILTIN_DISTRIBUTION else 1, dist, ep.name)

        for ep in sorted(eps, key=order):
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            info = PluginInfo(name=ep.name, distribution=dist, version=version)
            if ep.name in self.plugins:
                info.error = f"another plugin is already named {ep.name!r} ({self.plugins[ep.name].distribution})"
                self._record_failure(info, key=f"{ep.name}@{dist}")
                continue
            self.plugins[ep.name] = info
            if ep.name in self.disabled:
                info.disabled = True
                log.info("plugin_disabled", plugin=ep.name, distribution=dist)
                continue
            try:
                obj = ep.load()
            except Exception as exc:
                info.error = f"import failed: {_describe(exc)}"
                self._log_failure(info)
                continue
            self.register(obj, ep.name, info)

    def register(self, obj: object, name: str, info: PluginInfo | None = None) -> bool:
        """Register a plugin object (a module or an instance with hookimpls) under name."""
        if info is None:
            info = self.plugins.setdefault(name, PluginInfo(name=name, distribution="(inline)", version="-"))
        try:
            self.pm.register(obj, name=name)
            # A hook whose name matches no hookspec (a misspelling) is an error for this plugin.
            self.pm.check_pending()
        except Exception as exc:
            if self.pm.is_registered(obj):
                self.pm.unregister(obj)
            info.error = f"invalid plugin: {_describe(exc)}"
            self._log_failure(info)
            return False
        self._collect(name, obj, info)
        return info.error is None

    def unregister(self, name: str) -> None:
        """Remove a plugin and everything it registered."""
        obj = self.pm.get_plugin(name)
        if obj is not None:
            self.pm.unregister(obj)
        for registry in (self.transports, self.token_sources, self.bridges):
            for key in [k for k, v in registry.items() if v.plugin == name]:
                del registry[key]
        self.plugins.pop(name, None)

    def _record_failure(self, info: PluginInfo, key: str) -> None:
        self.plugins[key] = info
        self._log_failure(info)

    def _log_failure(self, info: PluginInfo) -> None:
        log.error(
            "plugin_failed",
            plugin=info.name,
            distribution=info.distribution,
            version=info.version,
            reason=info.error,
        )

    # -- registries ------------------------------------------------------------------------

    def _collect(self, name: str, obj: object, info: PluginInfo) -> None:
        """Call this plugin's hooks one by one, so one failing hook names its plugin."""
        registrars: dict[str, Callable[[str], Callable[..., None]]] = {
            "register_transports": lambda plugin: self._transport_registrar(plugin, info),
            "register_token_sources": lambda plugin: self._named_registrar(
                plugin, info, self.token_sources, "token source"
            ),
            "register_bridges": lambda plugin: self._named_registrar(
                plugin, info, self.bridges, "bridge"
            ),
        }
        for hook_name, make in registrars.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                if impl.plugin is not obj:
                    continue
                try:
                    impl.function(register=make(name))
                except Exception as exc:
                    info.error = f"hook {hook_name} raised {_describe(exc)}"
                    self._log_failure(info)
                    self.unregister(name)
                    self.plugins[name] = info
                    return

    def _claim(self, kind: str, name: str, plugin: str, existing: Any, info: PluginInfo) -> bool:
        if existing is None:
            return True
        message = (
            f"{kind} {name!r} from plugin {plugin!r} clashes with the one from "
            f"{existing.plugin!r}; keeping {existing.plugin!r}"
        )
        self.conflicts.append(message)
        info.registers.append(f"{kind} {name} (ignored: name taken by {existing.plugin})")
        log.error("plugin_name_clashed", kind=kind, name=name, plugin=plugin, kept=existing.plugin)
        return False

    def _transport_registrar(self, plugin: str, info: PluginInfo) -> Callable[..., None]:
        def register(
            name: str, factory: TransportFactory, *, sender: bool = False, receiver: bool = False
        ) -> None:
            if not isinstance(name, str) or not name:
                raise ValueError("a transport needs a non-empty name")
            if not (sender or receiver):
                raise ValueError(f"transport {name!r} must be a sender, a receiver or both")
            if not self._claim("transport", name, plugin, self.transports.get(name), info):
                return
            self.transports[name] = TransportSpec(name, factory, sender, receiver, plugin)
            roles = "+".join(r for r, on in (("sender", sender), ("receiver", receiver)) if on)
            info.registers.append(f"transport {name} ({roles})")

        return register

    def _named_registrar(
        self, plugin: str, info: PluginInfo, registry: dict[str, NamedFactory[Any]], kind: str
    ) -> Callable[..., None]:
        def register(name: str, factory: TokenSourceFactory | BridgeFactory) -> None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"a {kind} needs a non-empty name")
            if not self._claim(kind, name, plugin, registry.get(name), info):
                return
            registry[name] = NamedFactory(name, factory, plugin)
            info.registers.append(f"{kind} {name}")

        return register

    # -- queries ---------------------------------------------------------------------------

    def failures(self) -> list[PluginInfo]:
        return [info for info in self.plugins.values() if info.error is not None]

    def describe(self) -> list[dict[str, Any]]:
        return [info.to_dict() for info in self.plugins.values()]


def load_plugins(disable: Iterable[str] = ()) -> PluginHost:
    """A host with every installed plugin loaded (explicitly: importing lkbridge loads nothing)."""
    host = PluginHost(disable)
    host.load_entry_points()
    return host


def render_plugins(host: PluginHost) -> str:
    """Human-readable listing for `lkbridge plugins`."""
    lines: list[str] = []
    for info in host.plugins.values():
        status = "disabled" if info.disabled else ("FAILED" if info.error else "loaded")
        lines.append(f"{info.name}  ({info.distribution} {info.version})  {status}")
        for item in info.registers:
            lines.append(f"    {item}")
        if info.error:
            lines.append(f"    error: {info.error}")
    for conflict in host.conflicts:
        lines.append(f"conflict: {conflict}")
    return "\n".join(lines) if lines else "no plugins found"
