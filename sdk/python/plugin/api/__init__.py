"""Reference-compatible location of the plugin system's public API modules (`plugin.api.exceptions`)."""
