// A shop's own bundle with RudderStack's JavaScript SDK from npm (its bundled build, which
// loads no plugin from a CDN), pointed at an Ampelios worker as both its data plane and its
// source configuration: ?collector=http://host:port&writeKey=...
import { RudderAnalytics } from "@rudderstack/analytics-js/bundled";

const params = new URLSearchParams(location.search);
const collector = params.get("collector");
window.rudderanalytics = new RudderAnalytics();
window.rudderanalytics.load(params.get("writeKey"), collector, { configUrl: collector });
