# syntax=docker/dockerfile:1
# iotgate: build the TypeScript, then a production image with runtime dependencies only.

# --- build ---------------------------------------------------------------------------------------
FROM node:20-bookworm-slim AS build
WORKDIR /app
# Dependencies first (cached while package*.json are unchanged). Scripts are skipped here because
# `prepare` would compile before the sources are copied; the build runs explicitly below.
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts
# Sources (src, protocols, bench, bin, schemas, tsconfig*); .dockerignore keeps the rest out.
COPY . .
RUN npm run build

# --- runtime -------------------------------------------------------------------------------------
FROM node:20-bookworm-slim
ENV NODE_ENV=production \
    IOTGATE_CERTS_DIR=/app/certs
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY --from=build /app/bin ./bin
COPY --from=build /app/schemas ./schemas
# The certs dir is created on first start; a volume on /app/certs keeps the CA across restarts.
# Never bake keys into the image (.dockerignore leaves certs/ out).
RUN mkdir -p /app/certs && chown node:node /app/certs && chmod 0700 /app/certs
USER node
EXPOSE 8080 1883 8883 5683/udp
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.IOTGATE_HTTP_PORT || 8080) + '/readyz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
CMD ["node", "bin/iotgate.js", "start"]
