// node_https_client.js PROXY_PORT HOST PORT N: Node's own https module
// through an HTTP proxy's CONNECT, the way proxy agents do it: an Agent
// whose connections are CONNECT tunnels with TLS on top (SNI HOST, the
// trust store plus NODE_EXTRA_CA_CERTS), keep-alive with one socket, so
// N GETs of /peer and one POST of 1 MiB to /sha share one client TLS
// connection (for the interception specs).  Prints one JSON line:
// {"statuses":[...],"peers":[...],"sockets":S,"sha_ok":true} or {"error":...}.
'use strict';
const http = require('http');
const https = require('https');
const tls = require('tls');
const crypto = require('crypto');

const [proxyPort, host, port, n] = process.argv.slice(2);
let sockets = 0;
setTimeout(() => { out({ error: 'timeout' }); process.exit(2); }, 30000).unref();

function out(obj) { process.stdout.write(JSON.stringify(obj) + '\n'); }

class TunnelAgent extends https.Agent {
  createConnection(options, done) {
    const req = http.request({ host: '127.0.0.1', port: Number(proxyPort), method: 'CONNECT',
                               path: `${host}:${port}`, headers: { Host: `${host}:${port}` } });
    req.on('connect', (res, socket) => {
      if (res.statusCode !== 200) {
        done(new Error(`CONNECT answered ${res.statusCode}`));
        return;
      }
      sockets++;
      done(null, tls.connect({ socket, servername: host, ALPNProtocols: ['http/1.1'] }));
    });
    req.on('error', done);
    req.end();
  }
}

const agent = new TunnelAgent({ keepAlive: true, maxSockets: 1 });

function call(method, path, body) {
  return new Promise((resolve, reject) => {
    const req = https.request({ host, port: Number(port), method, path, agent,
                                headers: body ? { 'Content-Length': body.length } : {} }, (res) => {
      const parts = [];
      res.on('data', (d) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(parts).toString() }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

(async () => {
  const statuses = [];
  const peers = [];
  for (let i = 0; i < Number(n); i++) {
    const r = await call('GET', `/peer?node=${i}`);
    statuses.push(r.status);
    peers.push(r.body);
  }
  const big = crypto.randomBytes(1 << 20);
  const r = await call('POST', '/sha', big);
  statuses.push(r.status);
  const sha = crypto.createHash('sha256').update(big).digest('hex');
  out({ statuses, peers, sockets, sha_ok: r.body === sha });
  agent.destroy();
})().catch((e) => { out({ error: String(e && e.message || e) }); process.exit(1); });
