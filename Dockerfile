# erpsync as a container: `docker build -t erpsync .`, then `docker run erpsync run --config /config/x.yaml`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY . /app
RUN pip install . \
 && useradd --system --uid 10001 --home-dir /data erpsync \
 && mkdir -p /data && chown erpsync /data

# never root: erpsync needs nothing but its outbox directory and the network
USER erpsync
WORKDIR /data
VOLUME ["/data"]
EXPOSE 9187
ENTRYPOINT ["erpsync"]
CMD ["--help"]
