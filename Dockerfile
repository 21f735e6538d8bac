# rtmanager: one binary (`rtmanager run` = worker + HTTP bridge + stop_jobs consumer).
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin rtmanager

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq5 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/rtmanager /usr/local/bin/rtmanager
EXPOSE 8080
ENTRYPOINT ["rtmanager"]
CMD ["run"]
