"""Code shared by the SDK generations (v1 `plugin.sdk` today, v2 `plugin.sdk.plugin` later)."""
