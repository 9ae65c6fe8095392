"""C{telemetry-sim}: the connector simulator, a module per part (the command line: C{cli})."""
