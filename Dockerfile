# The image every pipeline component runs from: `docker run IMAGE relay|project|monitor|...`.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY outbox ./outbox
COPY streams ./streams
COPY relay ./relay
COPY projections ./projections
COPY monitor ./monitor
COPY migrations ./migrations
COPY cli ./cli
RUN pip install -c constraints.txt . && useradd --system --uid 10001 outbox
USER outbox
ENTRYPOINT ["outbox"]
CMD ["--help"]
