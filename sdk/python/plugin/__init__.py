"""neko's Python plugin package.

`plugin.sdk` is what plugins import; `python -m plugin.runner` is what neko starts. The package is
kept light on purpose: importing `plugin` loads nothing else.
"""
