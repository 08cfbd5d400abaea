# vidsearch web app + worker. Built by docker-compose.yml, which points it at Milvus standalone.
FROM python:3.11-slim

# PyTorch is installed first so its build can be chosen: the default resolves to the regular build from the package
# index; pass e.g. --build-arg TORCH_SPEC="torch==2.13.0" (or a CPU-only wheel from your mirror) to pick another.
ARG TORCH_SPEC="torch"
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN pip install "$TORCH_SPEC"

RUN useradd --create-home --uid 1000 vidsearch \
    && mkdir -p /data /home/vidsearch/.cache/huggingface \
    && chown -R vidsearch /data /home/vidsearch/.cache
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ingest ./ingest
COPY schema ./schema
COPY search_app ./search_app
RUN pip install .

USER vidsearch
ENV VIDSEARCH_HOME=/data VIDSEARCH_HOST=0.0.0.0
EXPOSE 7860
CMD ["vidsearch", "serve", "--host", "0.0.0.0"]
