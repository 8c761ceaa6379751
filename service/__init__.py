"""The reference web service: Starlette on uvicorn, with a 503 drain on SIGTERM."""

from service.app import create_app
from service.config import ServiceConfig
from service.drain import DrainMiddleware, DrainState

__all__ = ["DrainMiddleware", "DrainState", "ServiceConfig", "create_app"]
