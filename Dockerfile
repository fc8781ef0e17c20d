# valueloop worker image: `docker build -t valueloop .`
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream_app ./stream_app
RUN pip install --no-cache-dir . && useradd --uid 10001 valueloop
USER valueloop
ENV VALUELOOP_METRICS_HOST=0.0.0.0 VALUELOOP_DATA_DIR=/tmp/valueloop
EXPOSE 9108
ENTRYPOINT ["valueloop"]
CMD ["worker"]
