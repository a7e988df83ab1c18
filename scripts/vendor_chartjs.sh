#!/usr/bin/env bash
# Refresh the vendored Chart.js of the dashboard (ampelios/web/static/vendor/) from npm:
# the built UMD bundle and its licence, so the page needs no internet access.
set -euo pipefail
VERSION=4.6.1
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "chart.js@$VERSION" >/dev/null && tar xzf "chart.js-$VERSION.tgz")
cp "$work/package/dist/chart.umd.min.js" ampelios/web/static/vendor/chart.umd.min.js
cp "$work/package/LICENSE.md" ampelios/web/static/vendor/chart.js-LICENSE.md
echo "Chart.js $VERSION vendored: $(sha256sum ampelios/web/static/vendor/chart.umd.min.js)"
