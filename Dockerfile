# One image for every StreamLoop service; compose picks the service via CMD.
FROM python:3.11-slim-bookworm

# Use the image's interpreter (never download one), precompile for faster
# cold starts, and copy rather than hardlink since the uv cache is not kept.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=python3.11 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1

# Pinned so that `uv sync --frozen` reads uv.lock the same way every build.
RUN pip install uv==0.13.9

WORKDIR /app

# Dependencies first: this (large, torch + ray) layer is only rebuilt when
# the lock file changes, not on every source edit.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project

COPY README.md ./
COPY shared/ shared/
COPY services/ services/
COPY streamloop/ streamloop/
COPY infra/ infra/
RUN uv sync --frozen --no-dev

ENV PATH="/app/.venv/bin:${PATH}" \
    STREAMLOOP_VAR=/var/lib/streamloop

# Fixed uid so volume ownership is predictable across hosts. The state dir is
# created here, owned by the user, because Docker seeds a fresh named volume
# with the ownership of the directory it is mounted over.
RUN useradd --system --uid 10001 --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin streamloop \
    && install -d -o streamloop -g streamloop -m 0750 "${STREAMLOOP_VAR}"

USER streamloop

# Health checks live in docker-compose.yml: each service defines its own.
ENTRYPOINT ["streamloop"]
CMD ["--help"]
