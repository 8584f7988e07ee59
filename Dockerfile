# One image for the API (`bulkresize serve`) and the workers (`bulkresize worker`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    # Keep image buffers in the process instead of returning them to the kernel after each
    # image: fresh pages are expensive on VMs.
    MALLOC_MMAP_THRESHOLD_=33554432 \
    MALLOC_TRIM_THRESHOLD_=1073741824

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[all]" && rm -rf /src

RUN useradd --create-home --uid 10001 bulkresize
USER bulkresize
WORKDIR /home/bulkresize

EXPOSE 8000
CMD ["bulkresize", "serve", "--host", "0.0.0.0", "--port", "8000"]
