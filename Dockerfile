# One image for every Python role of windfarm-etl: api, worker, beat and flower.
# docker-compose.yml picks the role with `command`; on its own the image runs
# the API.
#
#   docker build -t windfarm-etl .
#
# For byte-for-byte rebuilds pin the base image by digest:
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Every role runs as this unprivileged user. A fixed numeric id lets an
# orchestrator verify it (Kubernetes runAsNonRoot) and match volume owners.
RUN groupadd --system --gid 10001 windfarm \
 && useradd --system --uid 10001 --gid windfarm --create-home \
        --home-dir /home/windfarm --shell /usr/sbin/nologin windfarm

WORKDIR /app

# Dependencies first, from the lock file alone (pinned, with hashes: the image
# gets exactly what the tests ran with), so that this (slow) layer is rebuilt
# only when the dependencies change, not on every code edit. The build backend
# is installed too: the package install below then needs no network.
COPY requirements.lock pyproject.toml ./
RUN pip install --require-hashes -r requirements.lock \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires']))" \
        > /tmp/build-requirements.txt \
 && pip install -r /tmp/build-requirements.txt \
 && rm /tmp/build-requirements.txt

# Then the code (README.md because pyproject.toml names it as the readme). It
# stays owned by root: the app user can read it, not change it.
COPY README.md ./
COPY windfarm ./windfarm
COPY api ./api
COPY workers ./workers
COPY scheduler ./scheduler
RUN pip install --no-deps --no-build-isolation . \
 && rm -rf build ./*.egg-info

USER 10001:10001

EXPOSE 8000 5555
CMD ["python", "-m", "api.serve", "--host", "0.0.0.0", "--port", "8000"]
