// Segment's standard snippet (@segment/snippet), rendered for a write key with its CDN
// host set to an Ampelios worker: node snippet.js <writeKey> <host:port> [http]
const snippet = require("@segment/snippet");

const [writeKey, host, scheme] = process.argv.slice(2);
let text = snippet.min({ apiKey: writeKey, host, page: false, useHostForBundles: true });
if (scheme === "http") text = text.split(`https://${host}`).join(`http://${host}`); // a worker without TLS
process.stdout.write(text);
