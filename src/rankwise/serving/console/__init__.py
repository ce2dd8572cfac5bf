"""The web console (``rankwise serve --ui``): search with every score shown, compare pipelines, give
feedback, watch quality, see the registry — pages on the server's own app, over its own API."""

from rankwise.serving.console.pages import mount_console

__all__ = ["mount_console"]
