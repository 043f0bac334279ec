# syntax=docker/dockerfile:1
# renewer as a sidecar or standalone container.
#   podman build --format docker --secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt .
# BASE is a local debootstrap image where no registry is reachable (.ci/container-check.sh);
# elsewhere pass --build-arg BASE=debian:bookworm-slim.
ARG BASE=localhost/debian:bookworm

# Shared by builder and runtime, so the venv's interpreter links resolve in both.
FROM ${BASE} AS python
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

FROM python AS builder
ARG DEBIAN_FRONTEND=noninteractive
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_INDEX_URL=${PIP_INDEX_URL}
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /tmp/build-venv
WORKDIR /src
# Dependencies first, from pyproject alone, so source edits reuse this layer.
# Optional build secret "pip_ca": CA bundle for TLS-intercepting proxies; never in a layer.
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' >/tmp/requirements.txt \
 && /tmp/build-venv/bin/pip wheel --wheel-dir /wheels -r /tmp/requirements.txt
COPY . ./
# The runtime venv gets no pip: it is installed into from the wheels by the build venv's pip.
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && /tmp/build-venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && python3 -m venv --without-pip /opt/renewer \
 && /tmp/build-venv/bin/pip --python /opt/renewer/bin/python install --no-index --find-links /wheels renewer \
 && /opt/renewer/bin/python -m compileall -q /opt/renewer

FROM python
RUN install -d -o 10001 -g 10001 -m 0700 /var/lib/renewer
COPY --from=builder /opt/renewer /opt/renewer
ENV PATH=/opt/renewer/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RENEWER_CONFIG=/etc/renewer/config.toml \
    RENEWER_LIVEZ_URL=http://127.0.0.1:9464/livez
LABEL org.opencontainers.image.title="renewer" \
      org.opencontainers.image.description="ACME certificate renewer for Apache APISIX and API7 gateways" \
      org.opencontainers.image.licenses="Apache-2.0"
VOLUME ["/var/lib/renewer"]
USER 10001:10001
WORKDIR /var/lib/renewer
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/opt/renewer/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['RENEWER_LIVEZ_URL'], timeout=4)"]
# The daemon is PID 1 and installs its own SIGTERM/SIGHUP handlers (exec form, no shell).
ENTRYPOINT ["/opt/renewer/bin/renewer"]
CMD ["run"]
