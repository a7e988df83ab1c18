#!/usr/bin/env bash
# Refresh the vendored build of Segment's analytics-next (ampelios/web/static/vendor/analytics-next/)
# from npm: the standalone bundle Segment's CDN serves as analytics.min.js, the chunks it
# loads from <cdn>/analytics-next/bundles/, and its licence. A worker serves them to sites
# whose snippet points its CDN at the worker (ampelios/api/routes/collector.py).
set -euo pipefail
VERSION=1.84.3
cd "$(dirname "$0")/.."
out=ampelios/web/static/vendor/analytics-next
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@segment/analytics-next@$VERSION" >/dev/null && tar xzf "segment-analytics-next-$VERSION.tgz")
rm -rf "$out" && mkdir -p "$out/bundles"
cp "$work/package/dist/umd/standalone.js" "$out/standalone.js"
cp "$work"/package/dist/umd/*.bundle.*.js "$out/bundles/"
cp "$work/package/LICENSE.MD" "$out/LICENSE.md"
echo "$VERSION" > "$out/VERSION"
echo "analytics-next $VERSION vendored: $(sha256sum "$out/standalone.js")"
