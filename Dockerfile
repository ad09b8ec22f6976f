# switchyard's image: `make image` (or docker build -t switchyard:dev .).
# A small Debian runtime with iptables in both backends (iptables-legacy and
# iptables-nft) plus conntrack and nft; the daemon picks the backend the
# host already uses (--iptables-backend=auto).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd ./cmd
COPY pkg ./pkg
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/switchyard ./cmd/switchyard

FROM debian:bookworm-slim
# iptables brings both backends (iptables-legacy and iptables-nft); the
# daemon detects which one the host uses.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables conntrack nftables iproute2 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/switchyard /usr/local/bin/switchyard
ENTRYPOINT ["/usr/local/bin/switchyard"]
