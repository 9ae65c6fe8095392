# The twistd plugin: `twistd telemetry`. Everything else lives in telemetry_service.tap.
from twisted.application.service import ServiceMaker

telemetry = ServiceMaker(
    "telemetry-hub",
    "telemetry_service.tap",
    "Live telemetry hub for Interledger connector networks (WebSocket, JSON Schema)",
    "telemetry",
)
