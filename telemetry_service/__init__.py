"""telemetry-hub: the live telemetry hub for Interledger connector networks."""

__version__ = "0.1.0"
