#!/usr/bin/env bash
# Opt-in end-to-end on a real kind cluster (needs Docker and kind; never part of `make test`):
# builds the image, loads it into kind, installs the chart, runs the four sample bots and
# waits until they are Running with their pods Ready.
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in docker kind; do
  command -v "$tool" >/dev/null || { echo "kind-e2e needs $tool on PATH" >&2; exit 2; }
done
CLUSTER=${KIND_CLUSTER:-tradingbot-e2e}
IMAGE=${IMAGE:-ghcr.io/r7/tradingbot:dev}
HELM=$(.venv/bin/python -c 'from localkube.binaries import require_binary as r; print(r("helm"))')
KUBECTL=$(.venv/bin/python -c 'from localkube.binaries import require_binary as r; print(r("kubectl"))')
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
docker build -f bot_image/Dockerfile -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"
"$HELM" upgrade --install tb helm/tradingbot-operator -n tradingbot-system --create-namespace \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set botImage="$IMAGE" \
  --wait --timeout 5m
"$KUBECTL" create namespace trading --dry-run=client -o yaml | "$KUBECTL" apply -f -
"$KUBECTL" label namespace trading pod-security.kubernetes.io/enforce=restricted --overwrite
"$KUBECTL" -n trading apply -k config/samples/
for bot in bot-estavel bot-medio bot-volatil bot-meme; do
  "$KUBECTL" -n trading wait "tradingbot/$bot" --for=jsonpath='{.status.phase}'=Running --timeout=300s
done
"$KUBECTL" -n trading get tradingbots
echo "kind-e2e: the four bots are Running on kind cluster $CLUSTER"
