# The worker, web app and CLI in one image: `docker compose build`.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY templates ./templates
COPY migrations ./migrations
COPY examples ./examples
RUN pip install -e .
EXPOSE 8000 9191
CMD ["newsletter", "--help"]
