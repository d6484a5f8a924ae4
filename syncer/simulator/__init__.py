"""A local fake of the Runtype messaging API: generated data, request handling, a socket server."""

from .app import handle
from .behaviour import Behaviour
from .generator import generate
from .server import SimulatorServer
from .upstream import Upstream

__all__ = ["Behaviour", "SimulatorServer", "Upstream", "generate", "handle"]
