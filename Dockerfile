# gitward operator image.
#   stage 1: kustomize, built from its Go module (no downloaded binaries)
#   stage 2: sops, built from the Go module pinned in hack/tools/sops (go.sum included): the version
#            the tests encrypt and decrypt with is the one the operator runs
#   stage 3: gitward and its dependencies as wheels
#   final:   python slim, non-root; git, gpg, ssh-keygen/ssh, kustomize and sops; no compilers, no pip cache
# Versions are pinned; Debian package versions are those of bookworm at the time of writing.

FROM golang:1.26.8-bookworm AS kustomize
ENV CGO_ENABLED=0 GOFLAGS=-trimpath
RUN go install sigs.k8s.io/kustomize/kustomize/v5@v5.8.3

FROM golang:1.26.8-bookworm AS sops
WORKDIR /src
COPY hack/tools/sops/go.mod hack/tools/sops/go.sum hack/tools/sops/tools.go ./
ENV CGO_ENABLED=0 GOFLAGS="-trimpath -mod=readonly -buildvcs=false"
RUN go build -ldflags="-s -w" -o /out/sops github.com/getsops/sops/v3/cmd/sops

FROM python:3.11.14-slim-bookworm AS wheels
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11.14-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      git=1:2.39.5-0+deb12u3 \
      gnupg=2.2.40-1.1+deb12u2 \
      openssh-client=1:9.2p1-2+deb12u10 \
      ca-certificates=20230311+deb12u1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 gitward \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin gitward
COPY --from=kustomize /go/bin/kustomize /usr/local/bin/kustomize
COPY --from=sops /out/sops /usr/local/bin/sops
COPY --from=wheels /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels gitward==0.1.0 && rm -rf /wheels
USER 65532:65532
ENV HOME=/tmp PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
EXPOSE 9090 8080
ENTRYPOINT ["gitward"]
CMD ["run", "--kustomize=kustomize build"]
