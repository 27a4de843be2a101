"""The ASGI edge: the FastAPI app for control endpoints and the lean handlers of `/v1/*`."""

from .app import create_app

__all__ = ["create_app"]
