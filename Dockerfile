# explain-service: `explain-service serve` (gunicorn) on port 8000, as a non-root user.
#
#   docker build -t explain-service .
#   docker run -p 8000:8000 explain-service          # SQLite audit store in /app/var, demo models
#   docker compose up                                # PostgreSQL, Redis, two replicas, Dask (compose.yaml)
#
# The runtime dependencies are the package's own (pyproject.toml), installed at the exact versions
# pinned in requirements.txt (a constraints file: the test, lint and benchmark tools it also pins
# stay out of the image).
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/app/requirements.txt \
    MPLCONFIGDIR=/tmp/matplotlib \
    EXPLAIN_MODELS_DIR=/app/models \
    EXPLAIN_DATABASE_URL=sqlite:////app/var/audit.sqlite3 \
    EXPLAIN_PLOTS_DIR=/app/var/plots

WORKDIR /app
# libgomp1: XGBoost's OpenMP runtime, which the slim base does not carry.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --create-home --uid 10001 --user-group explain

COPY requirements.txt pyproject.toml README.md ./
COPY explain_service ./explain_service
RUN pip install . && rm -rf build explain_service.egg-info

# The demo models, so that a fresh container has something to explain; mount a models
# directory over /app/models to serve your own (compose.yaml shares one between replicas).
RUN explain-service models build-demo --models-dir /app/models \
    && mkdir -p /app/var \
    && chown -R explain:explain /app/models /app/var

USER explain
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"]
ENTRYPOINT ["explain-service"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
