# The artstore service: gunicorn with deploy/gunicorn.conf.py, as an unprivileged user.
#
#   docker build -t artstore .
#   docker run -d -p 127.0.0.1:8080:8080 -v artstore-state:/etc/artstore \
#       -v /srv/artstore:/srv/artstore -e ARTSTORE_TRUSTED_PROXIES=1 artstore
#
# /etc/artstore is the state directory (artstore.json, projects.json, tokens, counters);
# without artstore.json the entry point writes one that publishes into
# /srv/artstore/public (base_path, for nginx to serve) through /srv/artstore/tmp.
# Any setting can be passed as ARTSTORE_<NAME>, e.g. ARTSTORE_BASE_PATH.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# Behind a TLS-inspecting proxy, pass its CA bundle to pip, e.g. with buildah:
#   --volume /etc/ssl/certs/ca-certificates.crt:/run/ca.crt:ro --build-arg PIP_CERT=/run/ca.crt
# (an ARG of this stage only: the final image does not carry it).
ARG PIP_CERT
RUN python3 -m venv /opt/artstore
COPY pyproject.toml README.md /build/
COPY src /build/src
RUN /opt/artstore/bin/pip install --no-cache-dir --disable-pip-version-check /build

FROM ${BASE_IMAGE}
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin artstore \
    && mkdir -p /etc/artstore /srv/artstore \
    && chown artstore:artstore /etc/artstore /srv/artstore
COPY --from=build /opt/artstore /opt/artstore
COPY deploy/gunicorn.conf.py /opt/artstore/gunicorn.conf.py
COPY deploy/docker-entrypoint.sh /usr/local/bin/artstore-entrypoint
ENV PATH=/opt/artstore/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ARTSTORE_CONFIG=/etc/artstore/artstore.json \
    GUNICORN_BIND=0.0.0.0:8080
VOLUME ["/etc/artstore", "/srv/artstore"]
USER artstore
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; port = os.environ['GUNICORN_BIND'].rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/_health', timeout=4)"]
ENTRYPOINT ["artstore-entrypoint"]
CMD ["gunicorn", "-c", "/opt/artstore/gunicorn.conf.py", "artstore.api:app_from_config()"]
