# FHIR R4 server. Runs against an external PostgreSQL given by DATABASE_URL:
#   docker build -t fhir-server .
#   docker run -p 8080:8080 -e DATABASE_URL=postgresql://user:pass@db:5432/fhir fhir-server
# Get a token for scripts: docker run --rm -e DATABASE_URL=... fhir-server fhir-server token --role admin

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fhir_server ./fhir_server
COPY hl7_bridge ./hl7_bridge
COPY mappings ./mappings
COPY terminology ./terminology
RUN pip install .

FROM python:3.11-slim
RUN groupadd --system fhir && useradd --system --gid fhir --home-dir /srv/fhir --create-home fhir
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER fhir
WORKDIR /srv/fhir
EXPOSE 8080
# DATABASE_URL must be set; the schema is migrated on start (disable with --no-migrate).
CMD ["fhir-server", "serve", "--host", "0.0.0.0", "--port", "8080", "--workers", "2"]
