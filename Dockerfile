# Outpost as an image: the static `outpost` binary and nothing else. FROM scratch: no shell,
# no shared library (glibc is linked into the binary) and no CA bundle (a cluster trusts its own
# CA).
#
# No builder image is pulled, since a site may have no registry: build the binary on the host
# (the repository's cargo config links it statically), then the image from the repository's
# root:
#
#   cargo build --release -p outpost
#   docker build -t outpost .
#
# The binary lands at target/release/outpost, the one file .dockerignore lets into the build
# context.
#
# A server, its state in a volume:
#
#   docker run -d --name outpost-server -p 7400:7400 -v outpost-server:/var/lib/outpost \
#       outpost server --listen 0.0.0.0:7400 --advertise 10.0.0.1:7400
#
# An agent is usually run on the host (packaging/systemd/outpost-agent.service): in a container
# its process tasks run inside that container.

FROM scratch
LABEL org.opencontainers.image.title="outpost" \
      org.opencontainers.image.description="Outpost: a self-healing container orchestrator for unreliable edge nodes" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY target/release/outpost /usr/local/bin/outpost
# Makes the data dir (a scratch image has no directories at all); outpost makes it 0700.
WORKDIR /var/lib/outpost
ENV OUTPOST_DATA_DIR=/var/lib/outpost
EXPOSE 7400
ENTRYPOINT ["/usr/local/bin/outpost"]
CMD ["--help"]
