FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY gateway ./gateway
COPY simulators ./simulators
COPY migrations ./migrations
RUN pip install --no-cache-dir -e . \
    && useradd --system --uid 10001 gateway
USER gateway
EXPOSE 9000 8000
ENTRYPOINT ["gateway"]
CMD ["serve", "--migrate"]
