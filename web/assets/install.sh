#!/usr/bin/env bash
# The web app's browser libraries, pinned by package-lock.json, copied into web/static/vendor/ where the API
# serves them (nothing is loaded from a CDN). Skipped when the copy matches the lock file already; npm keeps
# the downloaded tarballs in its own cache (~/.npm), so a CI machine that keeps that folder installs offline.
# Usage: bash web/assets/install.sh
set -euo pipefail
cd "$(dirname "$0")"
vendor=../static/vendor
stamp="$vendor/.package-lock.sha256"
want="$(sha256sum package-lock.json install.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "web assets: up to date ($vendor)"
    exit 0
fi
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error --prefer-offline
rm -rf "$vendor"
mkdir -p "$vendor"
cp node_modules/diff2html/bundles/js/diff2html-ui-slim.min.js node_modules/diff2html/bundles/js/diff2html.min.js "$vendor/"
cp node_modules/diff2html/bundles/css/diff2html.min.css "$vendor/"
cp node_modules/highlight.js/styles/github.min.css "$vendor/highlight-github.min.css"
cp node_modules/highlight.js/styles/github-dark.min.css "$vendor/highlight-github-dark.min.css"
cp node_modules/diff2html/LICENSE.md "$vendor/diff2html.LICENSE.md"
cp node_modules/highlight.js/LICENSE "$vendor/highlight.js.LICENSE"
# The API's own documentation (/docs) draws with Swagger UI, served from here too.
cp node_modules/swagger-ui-dist/swagger-ui-bundle.js node_modules/swagger-ui-dist/swagger-ui.css "$vendor/"
cp node_modules/swagger-ui-dist/LICENSE "$vendor/swagger-ui.LICENSE"
rm -rf node_modules
echo "$want" >"$stamp"
echo "web assets: installed into $vendor"
