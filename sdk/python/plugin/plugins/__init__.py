"""Namespace for plugin packages.

Inside a plugin process the runner points this package (and the top-level `plugins` package) at
the folder that holds every plugin folder (`NEKO_PLUGINS_ROOT`), so entries written as
`plugins.<dir>:<Class>` or `plugin.plugins.<dir>:<Class>` import the plugin's own package.
Outside a plugin process it is empty.
"""
