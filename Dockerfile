# vidsearch web app + ingestion worker. Built by docker-compose.yml, which points it at Milvus standalone and PostgreSQL.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

# PyTorch goes in first, in its own layer, so that its build can be chosen (pyproject leaves torch open on purpose):
#   GPU (default): TORCH_SPEC="torch" gives PyPI's regular Linux wheel, which bundles CUDA; it also runs on CPU, but
#                  the image is several GB. Run it with a GPU reserved (see the commented `deploy:` in the compose file).
#   CPU only:      a much smaller image: pass the CPU wheel index of PyTorch's install instructions, e.g.
#                  docker compose build --build-arg TORCH_SPEC="torch --index-url <PyTorch CPU wheel index>"
#   Pin a version: --build-arg TORCH_SPEC="torch==2.9.1"
# TORCH_SPEC is split into words on purpose so that it may carry pip options.
ARG TORCH_SPEC="torch"
RUN pip install $TORCH_SPEC

RUN useradd --create-home --uid 1000 vidsearch \
    && mkdir -p /data /home/vidsearch/.cache/huggingface \
    && chown -R vidsearch:vidsearch /data /home/vidsearch/.cache
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ingest ./ingest
COPY schema ./schema
COPY search_app ./search_app
# With PostgreSQL (the compose file's catalog) and S3 storage support.
RUN pip install ".[postgres,s3]"

USER vidsearch
ENV HF_HOME=/home/vidsearch/.cache/huggingface VIDSEARCH_HOME=/data VIDSEARCH_HOST=0.0.0.0
VOLUME ["/data", "/home/vidsearch/.cache/huggingface"]
EXPOSE 7860
CMD ["vidsearch", "serve", "--host", "0.0.0.0"]
