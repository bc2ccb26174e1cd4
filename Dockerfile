# ScriptGate: the OpenIM callback server (docs/deploy.md).
# Two stages: the build stage installs the locked dependencies into a virtualenv; the
# runtime stage copies only that virtualenv, so no pip cache or build tools ship.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/scriptgate
ENV PATH=/opt/scriptgate/bin:$PATH
WORKDIR /src
# The exact versions CI tested, each checked against its hash (requirements.lock).
COPY requirements.lock .
RUN pip install --require-hashes --no-deps -r requirements.lock \
    # The lock also pins the test tools; the image does not run tests.
    && pip uninstall -y ruff pytest pytest-xdist pytest-timeout execnet iniconfig pluggy
COPY pyproject.toml README.md LICENSE ./
COPY server server
COPY sandbox sandbox
# --no-deps: everything it needs came from the lock above.
RUN pip install --no-deps --no-build-isolation . && rm -rf /src

FROM python:3.11-slim
ENV PATH=/opt/scriptgate/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/scriptgate /opt/scriptgate
# An unprivileged user with no login shell and no home to write to.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin scriptgate
USER 10001:10001
WORKDIR /tmp
EXPOSE 10006
# Healthy = the store answers and the live scripts are loaded (503 otherwise).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:10006/healthz?strict=1', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["scriptgate"]
CMD ["serve", "--host", "0.0.0.0", "--port", "10006"]
