"""Names and numbers that are part of the SDK's contract with plugin code."""

#: The SDK version neko's supervisor checks against `[plugin.sdk]` in plugin.toml.
SDK_VERSION = "0.1.0"

#: The SDK name sent in HELLO.
SDK_NAME = "neko-sdk-python"

#: Attribute holding an `EventMeta` on every decorated function.
EVENT_META_ATTR = "__neko_event_meta__"

#: Attribute set to True on classes decorated with `@neko_plugin`.
NEKO_PLUGIN_TAG = "__neko_plugin__"

#: Attribute that may hold a `PluginMeta` on a plugin class.
NEKO_PLUGIN_META_ATTR = "__neko_plugin_meta__"

#: Attribute holding the `persist` flag of a decorated function.
PERSIST_ATTR = "_neko_persist"

#: Legacy name of `PERSIST_ATTR` (the reference's `checkpoint=` argument lands in the same place).
CHECKPOINT_ATTR = PERSIST_ATTR

#: Attribute holding a `WorkerConfig` on functions decorated with `@worker`.
WORKER_MODE_ATTR = "_neko_worker_mode"

#: Attribute reserved for hook metadata (newer SDK).
HOOK_META_ATTR = "__neko_hook_meta__"

#: Event types with a meaning of their own; `@custom_event` refuses them.
STANDARD_EVENT_TYPES = frozenset({"plugin_entry", "lifecycle", "message", "timer"})

#: Lifecycle ids `@lifecycle` accepts.
LIFECYCLE_IDS = frozenset({"startup", "shutdown", "reload", "freeze", "unfreeze"})

#: The input schema used when an entry declares none.
DEFAULT_INPUT_SCHEMA = {"type": "object", "properties": {}}

__all__ = [
    "SDK_VERSION",
    "SDK_NAME",
    "EVENT_META_ATTR",
    "NEKO_PLUGIN_TAG",
    "NEKO_PLUGIN_META_ATTR",
    "PERSIST_ATTR",
    "CHECKPOINT_ATTR",
    "WORKER_MODE_ATTR",
    "HOOK_META_ATTR",
    "STANDARD_EVENT_TYPES",
    "LIFECYCLE_IDS",
    "DEFAULT_INPUT_SCHEMA",
]
