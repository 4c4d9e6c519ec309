"""The plugin process runtime: codec, link, dispatch. Private: plugins never import it."""
