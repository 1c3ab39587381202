FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ipam ipam
COPY migrations migrations
COPY schemas schemas
RUN pip install --no-cache-dir .
USER 65534
EXPOSE 8080
CMD ["ipam", "serve", "--listen", "0.0.0.0:8080"]
