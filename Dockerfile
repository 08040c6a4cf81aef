# gitward operator image: build a wheel in one stage, run it non-root in a
# slim one. Hardening (pinned digests, read-only root, hadolint) comes with
# the install manifests.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir build==1.2.2 && python -m build --wheel --outdir /dist

FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends git gnupg openssh-client \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --create-home --shell /usr/sbin/nologin gitward
COPY --from=build /dist/*.whl /tmp/
RUN pip install --no-cache-dir /tmp/*.whl && rm /tmp/*.whl
USER 65532:65532
ENTRYPOINT ["gitward"]
CMD ["--help"]
