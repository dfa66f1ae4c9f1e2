# The Flash Payout Monitor: one image for `flash-payouts migrate` and `flash-payouts serve`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY ledger ledger
COPY lnurl_gateway lnurl_gateway
COPY exporter exporter
COPY api api
COPY dashboards dashboards
COPY btcpay_sim btcpay_sim
COPY flash_payouts flash_payouts
COPY bench bench
RUN pip install . \
    && useradd --system --home-dir /data --create-home flash

USER flash
WORKDIR /data
# Gateway (taps, LNURL callbacks, BTCPay webhooks), REST API, Prometheus /metrics.
EXPOSE 8080 8081 9810
ENV FLASH_GATEWAY_LISTEN=0.0.0.0:8080 \
    FLASH_API_LISTEN=0.0.0.0:8081 \
    FLASH_METRICS_LISTEN=0.0.0.0:9810
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"
CMD ["flash-payouts", "serve"]
