# syntax=docker/dockerfile:1
# The feip controller image. The build step is exactly the command CI runs (.ci/run), so a
# green CI means this stage builds.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

# glibc + libgcc + CA certificates, no shell, no package manager; uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/feip /feip
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/feip"]
CMD ["controller"]
