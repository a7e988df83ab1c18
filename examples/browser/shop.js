// A shop's own bundle, as a site builds it: analytics.js installed from npm and bundled
// (esbuild), its settings fetched from the Ampelios worker named in the page's URL
// (?collector=http://host:port&writeKey=...), so its calls go there too.
import { AnalyticsBrowser } from "@segment/analytics-next";

const params = new URLSearchParams(location.search);
const segment = JSON.parse(params.get("segment") || "{}"); // e.g. a delivery strategy
window.analytics = AnalyticsBrowser.load(
  { writeKey: params.get("writeKey"), cdnURL: params.get("collector") },
  { integrations: { "Segment.io": segment } },
);
