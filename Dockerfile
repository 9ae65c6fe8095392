# The telemetry hub as a container. Its steps are the ones `make test` runs in
# tests/test_packaging.py: build the wheel, install it into a fresh virtualenv, regenerate
# Twisted's plugin cache, run `twistd -n --pidfile= telemetry`, probe it with
# telemetry-healthcheck.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY telemetry_service ./telemetry_service
COPY twisted ./twisted
COPY schemas ./schemas
RUN python -m pip install --no-cache-dir -c constraints.txt build \
 && python -m build --wheel --outdir /dist \
 && cp constraints.txt /dist/

FROM python:3.11-slim
COPY --from=build /dist/ /tmp/dist/
# Dependencies in the exact versions the test suite passed with (constraints.txt).
# The plugin cache (twisted/plugins/dropin.cache) is written now, while root can write it.
RUN python -m venv /opt/telemetry-hub \
 && /opt/telemetry-hub/bin/pip install --no-cache-dir -c /tmp/dist/constraints.txt /tmp/dist/*.whl \
 && rm -rf /tmp/dist \
 && /opt/telemetry-hub/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
 && useradd --system --no-create-home --shell /usr/sbin/nologin telemetry \
 && mkdir -p /var/lib/telemetry-hub \
 && chown telemetry /var/lib/telemetry-hub
ENV PATH=/opt/telemetry-hub/bin:$PATH \
    TELEMETRY_WS_PORT=9000 \
    TELEMETRY_STATE_DIR=/var/lib/telemetry-hub \
    PYTHONUNBUFFERED=1
# the hub's state (history, epoch, replay cache) survives the container through this volume
VOLUME ["/var/lib/telemetry-hub"]
USER telemetry
WORKDIR /tmp
# 9000: WebSocket for connectors and dashboards; 8080: the live page and /health
EXPOSE 9000 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["telemetry-healthcheck"]
# exec form: twistd is PID 1 and receives every signal itself: SIGTERM (1001 to every peer,
# exit 0), SIGHUP (schemas and tokens again), SIGUSR2 (`docker kill -s USR2`: restart in
# place, as PID 1 still, with the ports never closed, so no connector is refused)
CMD ["twistd", "-n", "--pidfile=", "telemetry"]
